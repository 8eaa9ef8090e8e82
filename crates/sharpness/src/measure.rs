//! Sharpness measures (being written).
