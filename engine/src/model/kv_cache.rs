//! The CPU backend's KV cache: per layer, keys and values for every position so far.

/// Keys and values [capacity, n_head_kv, head_dim] per layer, f32.
pub struct KvCache {
    pub keys: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    /// Positions filled so far.
    pub len: usize,
    pub capacity: usize,
    row: usize,
    /// Round what is written to f16, as a cache stored in f16 would hold it.
    f16: bool,
}

impl KvCache {
    pub fn new(n_layer: usize, capacity: usize, n_head_kv: usize, head_dim: usize, f16: bool) -> Self {
        let row = n_head_kv * head_dim;
        KvCache {
            keys: vec![vec![0.0; capacity * row]; n_layer],
            values: vec![vec![0.0; capacity * row]; n_layer],
            len: 0,
            capacity,
            row,
            f16,
        }
    }

    /// Stores k and v [n_tokens, n_head_kv, head_dim] of `layer` at positions len..len+n_tokens.
    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let start = self.len * self.row;
        let round = |x: &f32| if self.f16 { crate::cpu::attention::round_f16(*x) } else { *x };
        for (slot, x) in self.keys[layer][start..start + k.len()].iter_mut().zip(k) {
            *slot = round(x);
        }
        for (slot, x) in self.values[layer][start..start + v.len()].iter_mut().zip(v) {
            *slot = round(x);
        }
    }

    /// Forgets every position (a new sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}
