//! STUB (replaced by the protocol helper).
