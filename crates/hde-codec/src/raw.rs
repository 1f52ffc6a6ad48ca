//! The identity codec.

use crate::{Codec, CodecId, Error, Result};

/// Stores bytes as they are: the fallback for incompressible data, and the cheapest decode.
#[derive(Debug, Default, Clone, Copy)]
pub struct Raw;

impl Codec for Raw {
    fn id(&self) -> CodecId {
        CodecId::Raw
    }

    fn compress_into(&mut self, input: &[u8], _reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        out.extend_from_slice(input);
        Ok(input.len())
    }

    fn decompress_into(&mut self, input: &[u8], _reference: &[u8], out: &mut [u8]) -> Result<usize> {
        let capacity = out.len();
        let dst = out.get_mut(..input.len()).ok_or(Error::OutputTooLarge { codec: CodecId::Raw, capacity })?;
        dst.copy_from_slice(input);
        Ok(input.len())
    }

    fn compress_bound(&self, input_len: usize) -> usize {
        input_len
    }
}
