//! The set-up step that fetches the alignment experiment's encoders and image–text data.
