//! Token embedding lookup and learned position embeddings.

/// out[t, :] = table[ids[t], :] for a [vocab, dim] table.
pub fn embedding(table: &[f32], ids: &[u32], out: &mut [f32], dim: usize) {
    assert_eq!(out.len(), ids.len() * dim);
    for (&id, out_row) in ids.iter().zip(out.chunks_exact_mut(dim)) {
        let start = id as usize * dim;
        out_row.copy_from_slice(&table[start..start + dim]);
    }
}

/// x[t, :] += table[positions[t], :].
pub fn position_add(table: &[f32], positions: &[u32], x: &mut [f32], dim: usize) {
    assert_eq!(x.len(), positions.len() * dim);
    for (&p, row) in positions.iter().zip(x.chunks_exact_mut(dim)) {
        let start = p as usize * dim;
        for (v, &e) in row.iter_mut().zip(&table[start..start + dim]) {
            *v += e;
        }
    }
}
