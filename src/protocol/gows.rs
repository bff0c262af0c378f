//! STUB (replaced by the protocol helper).
use crate::protocol::{Command, DecodeFailure};
use crate::publication::Publication;
use bytes::Bytes;
/// Decode a gows message.
pub fn decode(_payload: &mut [u8]) -> Result<Command<'_>, DecodeFailure> { todo!() }
/// Render a publication as a complete gows frame.
pub fn render_publication(_p: &Publication) -> Bytes { todo!() }
