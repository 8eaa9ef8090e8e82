//! The image–text pairs: emoji (Google and Twitter renderings) and Open Clip Art drawings.
