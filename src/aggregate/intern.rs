//! Values by number: the interned strings and tag sets the open records share, and the lists of
//! tag sets of records with more than one.

use std::hash::Hash;
use std::sync::Arc;

use foldhash::HashMap;

/// Values by number, counted by use. Strings are kept as `Arc<str>` (one allocation, the bytes
/// right after the counts): a lookup in a large interner touches as little memory as it can.
#[derive(Debug)]
pub(super) struct Interner<T: ?Sized> {
    ids: HashMap<Arc<T>, u32>,
    slots: Vec<Option<(Arc<T>, u32)>>,
    free: Vec<u32>,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self { ids: HashMap::default(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<T: ?Sized + Hash + Eq> Interner<T>
where
    for<'a> Arc<T>: From<&'a T>,
{
    pub(super) fn get(&self, value: &T) -> Option<u32> {
        self.ids.get(value).copied()
    }

    /// The number of `value`, counted once more.
    pub(super) fn acquire(&mut self, value: &T) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            self.slots[id as usize].as_mut().expect("a live id").1 += 1;
            return id;
        }
        let shared: Arc<T> = Arc::from(value);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("fewer than 4 billion open values")
            }
        };
        self.slots[id as usize] = Some((shared.clone(), 1));
        self.ids.insert(shared, id);
        id
    }

    /// Counts one use of `id` less; frees it after the last.
    pub(super) fn release(&mut self, id: u32) {
        let slot = &mut self.slots[id as usize];
        let (value, uses) = slot.as_mut().expect("a live id");
        *uses -= 1;
        if *uses == 0 {
            self.ids.remove(&**value);
            *slot = None;
            self.free.push(id);
        }
    }

    /// How many values are interned.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn resolve(&self, id: u32) -> &T {
        &self.slots[id as usize].as_ref().expect("a live id").0
    }
}

/// The tag-set lists of records with more than one, by number: kept out of the records so that
/// an open record (key and bucket) takes 64 bytes, one cache line of the key table.
#[derive(Debug, Default)]
pub(super) struct Lists {
    lists: Vec<Vec<(u32, u32)>>,
    free: Vec<u32>,
}

impl Lists {
    pub(super) fn push(&mut self, list: Vec<(u32, u32)>) -> u32 {
        match self.free.pop() {
            Some(at) => {
                self.lists[at as usize] = list;
                at
            }
            None => {
                self.lists.push(list);
                u32::try_from(self.lists.len() - 1).expect("fewer than 4 billion open records")
            }
        }
    }

    pub(super) fn get(&self, at: u32) -> &[(u32, u32)] {
        &self.lists[at as usize]
    }

    pub(super) fn get_mut(&mut self, at: u32) -> &mut Vec<(u32, u32)> {
        &mut self.lists[at as usize]
    }

    pub(super) fn free(&mut self, at: u32) {
        self.lists[at as usize] = Vec::new();
        self.free.push(at);
    }
}
