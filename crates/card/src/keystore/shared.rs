//! One key store used by two card applications (the CAC and PIV applets of a dual card), or a
//! view of some of its identities (the CAC applets take the RSA ones only).

use super::{Identity, KeyError, KeyStore};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// A key store shared behind a mutex, seen through a selection of its identities.
#[derive(Clone)]
pub struct SharedStore {
    ids: Vec<Identity>,
    /// Index in this view → index in the store.
    map: Vec<usize>,
    inner: Arc<Mutex<Box<dyn KeyStore>>>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("map", &self.map)
            .finish()
    }
}

impl SharedStore {
    /// Shares `store`, with all of its identities.
    pub fn new(store: Box<dyn KeyStore>) -> Self {
        let ids = store.identities().to_vec();
        SharedStore {
            map: (0..ids.len()).collect(),
            ids,
            inner: Arc::new(Mutex::new(store)),
        }
    }

    /// The same store, seen through the identities `keep` accepts, in order.
    pub fn view(&self, keep: impl Fn(&Identity) -> bool) -> Self {
        let (ids, map) = self
            .ids
            .iter()
            .zip(&self.map)
            .filter(|(id, _)| keep(id))
            .map(|(id, i)| (id.clone(), *i))
            .unzip();
        SharedStore {
            ids,
            map,
            inner: Arc::clone(&self.inner),
        }
    }

    fn with<T>(
        &self,
        index: usize,
        f: impl FnOnce(&mut dyn KeyStore, usize) -> Result<T, KeyError>,
    ) -> Result<T, KeyError> {
        let i = *self
            .map
            .get(index)
            .ok_or_else(|| KeyError::NotFound(format!("no key {index}")))?;
        let mut store = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(store.as_mut(), i)
    }
}

impl KeyStore for SharedStore {
    fn identities(&self) -> &[Identity] {
        &self.ids
    }
    fn rsa_raw(&mut self, index: usize, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.with(index, |s, i| s.rsa_raw(i, input))
    }
    fn ec_sign(&mut self, index: usize, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.with(index, |s, i| s.ec_sign(i, digest))
    }
    fn ecdh(&mut self, index: usize, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.with(index, |s, i| s.ecdh(i, peer))
    }
}
