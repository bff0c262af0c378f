//! STUB (replaced by the config helper).
