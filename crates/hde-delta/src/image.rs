//! [`Image`]: an image's bytes, shared without copies.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Bytes that something else keeps alive, e.g. a memory-mapped file.
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// An image's bytes, cheap to clone: owned (a decoded round) or shared from elsewhere for as
/// long as needed (a memory-mapped reference file). Dereferences to `[u8]`.
///
/// A shared image must not change while held: the layer trusts its page hashes. A change
/// makes later frames fail their checksum at the receiver (a typed error), not pass wrong.
#[derive(Clone)]
pub struct Image(Inner);

#[derive(Clone)]
enum Inner {
    Owned(Arc<Vec<u8>>),
    Shared(SharedBytes),
}

impl Image {
    /// An image over bytes kept alive elsewhere.
    pub fn shared(bytes: SharedBytes) -> Self {
        Image(Inner::Shared(bytes))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.0 {
            Inner::Owned(v) => v,
            Inner::Shared(b) => (**b).as_ref(),
        }
    }

    /// The bytes as an owned vector: no copy when this was the only handle to owned bytes.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Inner::Owned(v) => Arc::try_unwrap(v).unwrap_or_else(|shared| (*shared).clone()),
            Inner::Shared(b) => (*b).as_ref().to_vec(),
        }
    }
}

impl From<Vec<u8>> for Image {
    fn from(v: Vec<u8>) -> Self {
        Image(Inner::Owned(Arc::new(v)))
    }
}

impl Deref for Image {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Image {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0 {
            Inner::Owned(_) => "owned",
            Inner::Shared(_) => "shared",
        };
        write!(f, "Image({} bytes, {kind})", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_and_shared_read_alike_and_unwrap_without_copy() {
        let owned = Image::from(vec![1, 2, 3]);
        let shared = Image::shared(Arc::new(vec![1u8, 2, 3]));
        assert_eq!(&owned[..], &shared[..]);
        assert_eq!(format!("{shared:?}"), "Image(3 bytes, shared)");
        let ptr = owned.as_ptr();
        let v = owned.into_vec();
        assert_eq!(v.as_ptr(), ptr);
        assert_eq!(shared.into_vec(), vec![1, 2, 3]);
    }
}
