//! The KV page pool the scheduler hands out: every page is free, cached (free, but holding a
//! full page of a known prefix that a later prompt may reuse), or owned by one or more sequences
//! (shared full pages of a common prefix). Prefix caching: a full page is known by a key chained
//! from its parent's key and its tokens; the page keeps its tokens too, so a hit is checked
//! exactly (no hash collision can serve wrong keys and values). Free cached pages sit in an LRU
//! and are evicted, oldest first, only when no plain free page is left.

use std::collections::{BTreeMap, HashMap};

/// A prefix key: the parent's key and the page's tokens, hashed.
pub type PageKey = u64;

/// The key of a full page of `tokens` following the page whose key is `parent`.
pub fn page_key(parent: Option<PageKey>, tokens: &[u32]) -> PageKey {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut hasher);
    tokens.hash(&mut hasher);
    hasher.finish()
}

#[derive(Clone, Debug, Default)]
struct Page {
    /// Sequences holding the page.
    owners: usize,
    /// The prefix this page holds, when registered in the cache: its key, parent and tokens.
    cached: Option<(PageKey, Option<PageKey>, Vec<u32>)>,
    /// Position in the LRU while free and cached.
    lru_stamp: Option<u64>,
}

/// The pool; see the file's opening comment.
pub struct PagePool {
    pages: Vec<Page>,
    /// Free pages that hold nothing known, taken from the end.
    free: Vec<u32>,
    /// Free cached pages by the time they became free (oldest first).
    lru: BTreeMap<u64, u32>,
    clock: u64,
    /// Registered full pages by key.
    by_key: HashMap<PageKey, u32>,
}

impl PagePool {
    pub fn new(n_pages: usize) -> Self {
        PagePool {
            pages: vec![Page::default(); n_pages],
            free: (0..n_pages as u32).rev().collect(),
            lru: BTreeMap::new(),
            clock: 0,
            by_key: HashMap::new(),
        }
    }

    pub fn n_pages(&self) -> usize {
        self.pages.len()
    }

    /// Pages that can be taken now (free or cached).
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Free pages that still hold a cached prefix.
    pub fn cached(&self) -> usize {
        self.lru.len()
    }

    /// Pages with at least one owner.
    pub fn used(&self) -> usize {
        self.n_pages() - self.available()
    }

    /// A page for a new owner: a plain free page, else the least recently freed cached one
    /// (forgetting its prefix). None when every page is owned.
    pub fn take(&mut self) -> Option<u32> {
        let page = match self.free.pop() {
            Some(page) => page,
            None => {
                let (_, page) = self.lru.pop_first()?;
                let entry = &mut self.pages[page as usize];
                entry.lru_stamp = None;
                if let Some((key, _, _)) = entry.cached.take() {
                    self.by_key.remove(&key);
                }
                page
            }
        };
        self.pages[page as usize].owners = 1;
        Some(page)
    }

    /// One owner lets go of `page`; with none left it becomes cached (if registered) or free.
    pub fn release(&mut self, page: u32) {
        let entry = &mut self.pages[page as usize];
        debug_assert!(entry.owners > 0, "page {page} released more often than taken");
        entry.owners = entry.owners.saturating_sub(1);
        if entry.owners > 0 {
            return;
        }
        if entry.cached.is_some() {
            self.clock += 1;
            entry.lru_stamp = Some(self.clock);
            self.lru.insert(self.clock, page);
        } else {
            self.free.push(page);
        }
    }

    /// The registered page holding `tokens` after the prefix `parent`, taken for one more owner
    /// (out of the LRU if it was free). None on a miss.
    pub fn share(&mut self, parent: Option<PageKey>, tokens: &[u32]) -> Option<(u32, PageKey)> {
        let key = page_key(parent, tokens);
        let &page = self.by_key.get(&key)?;
        let entry = &mut self.pages[page as usize];
        match &entry.cached {
            Some((_, p, t)) if *p == parent && t == tokens => {}
            _ => return None,
        }
        if let Some(stamp) = entry.lru_stamp.take() {
            self.lru.remove(&stamp);
        }
        entry.owners += 1;
        Some((page, key))
    }

    /// Registers owned `page` as holding `tokens` after `parent`, unless another page already
    /// holds that prefix. Returns the page's key either way (the chain continues from it).
    pub fn register(&mut self, page: u32, parent: Option<PageKey>, tokens: &[u32]) -> PageKey {
        let key = page_key(parent, tokens);
        let entry = &mut self.pages[page as usize];
        if entry.cached.is_none() && !self.by_key.contains_key(&key) {
            entry.cached = Some((key, parent, tokens.to_vec()));
            self.by_key.insert(key, page);
        }
        key
    }

    /// Owners of `page` (for the invariant checks of the tests).
    #[cfg(test)]
    pub fn owners(&self, page: u32) -> usize {
        self.pages[page as usize].owners
    }

    /// Whether `page` is in the free list or the LRU (for the tests).
    #[cfg(test)]
    pub fn is_available(&self, page: u32) -> bool {
        self.free.contains(&page) || self.pages[page as usize].lru_stamp.is_some()
    }
}
