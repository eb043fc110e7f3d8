//! Mixture of experts: the CPU twin of gpu/src/moe.rs. An expert tensor [n_expert, rows, n_in]
//! is one matrix of n_expert * rows rows; expert ids come as [T, k] (assignment a = t k + j is
//! token t's j-th expert).

use super::quantized::{Matrix, matmul};

/// The assignments of `ids` grouped by expert: (offsets [n_expert + 1], order), expert e's
/// assignments being order[offsets[e]..offsets[e + 1]], ascending. Ids of n_expert or more are
/// left out of every group (as the GPU's `moe_route` leaves them).
pub fn group_by_expert(ids: &[u32], n_expert: usize) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32; n_expert + 1];
    for &e in ids {
        if (e as usize) < n_expert {
            offsets[e as usize + 1] += 1;
        }
    }
    for e in 0..n_expert {
        offsets[e + 1] += offsets[e];
    }
    let mut cursor = offsets.clone();
    let mut order = vec![0u32; offsets[n_expert] as usize];
    for (a, &e) in ids.iter().enumerate() {
        if (e as usize) < n_expert {
            order[cursor[e as usize] as usize] = a as u32;
            cursor[e as usize] += 1;
        }
    }
    (offsets, order)
}

/// How an expert product reads its input.
#[derive(Clone, Copy, Debug)]
pub struct ExpertShape {
    pub n_expert: usize,
    /// Rows per expert.
    pub rows: usize,
    pub n_in: usize,
    /// Experts per token.
    pub k: usize,
    /// x [T k, n_in], a row per assignment (down), rather than [T, n_in], a row per token (gate
    /// and up).
    pub x_per_assignment: bool,
}

/// y[a, :] = W[ids[a]] x_a (+ bias[ids[a]]) for every assignment a, W the expert matrix
/// `weights` ([n_expert rows, n_in]), bias [n_expert rows], y [T k, rows], each expert's rows
/// multiplied once by all of its assignments' rows, with llama.cpp's arithmetic
/// (`quantized::matmul`). Ids must be below n_expert.
pub fn experts_matmul(
    x: &[f32],
    weights: &Matrix,
    bias: Option<&[f32]>,
    ids: &[u32],
    shape: ExpertShape,
) -> Vec<f32> {
    let ExpertShape { n_expert, rows, n_in, k, x_per_assignment } = shape;
    let (offsets, order) = group_by_expert(ids, n_expert);
    let mut y = vec![0.0f32; ids.len() * rows];
    for e in 0..n_expert {
        let group = &order[offsets[e] as usize..offsets[e + 1] as usize];
        if group.is_empty() {
            continue;
        }
        let x_rows: Vec<f32> = group
            .iter()
            .flat_map(|&a| {
                let row = if x_per_assignment { a as usize } else { a as usize / k };
                x[row * n_in..(row + 1) * n_in].iter().copied()
            })
            .collect();
        let w = weights.rows(n_in, e * rows, (e + 1) * rows);
        let b = bias.map(|b| &b[e * rows..(e + 1) * rows]);
        let mut out = vec![0.0f32; group.len() * rows];
        matmul(&x_rows, &w, b, &mut out, n_in, rows);
        for (&a, out) in group.iter().zip(out.chunks_exact(rows)) {
            y[a as usize * rows..(a as usize + 1) * rows].copy_from_slice(out);
        }
    }
    y
}

/// The `k` largest logits' indices, each with the softmax of the chosen logits (ties: lower index).
pub fn top_k_softmax(logits: &[f32], k: usize) -> Vec<(usize, f64)> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(k);
    let max = logits[order[0]] as f64;
    let exps: Vec<f64> = order.iter().map(|&e| (logits[e] as f64 - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    order.into_iter().zip(exps).map(|(e, x)| (e, x / total)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_picks_the_largest_and_normalises_over_them_only() {
        let chosen = top_k_softmax(&[0.5, 3.0, -1.0, 3.0 - 2f32.ln()], 2);
        assert_eq!(chosen.iter().map(|&(e, _)| e).collect::<Vec<_>>(), [1, 3]);
        // exp(3) : exp(3 - ln 2) = 2 : 1.
        assert!((chosen[0].1 - 2.0 / 3.0).abs() < 1e-7 && (chosen[1].1 - 1.0 / 3.0).abs() < 1e-7);
        assert_eq!(top_k_softmax(&[1.0, 1.0, 1.0], 1), [(0, 1.0)]);
    }

    #[test]
    fn assignments_are_grouped_by_expert_in_order() {
        let (offsets, order) = group_by_expert(&[2, 0, 2, 1, 9, 2], 4);
        assert_eq!(offsets, [0, 1, 2, 5, 5]);
        assert_eq!(order, [1, 3, 0, 2, 5]);
    }

    #[test]
    fn each_assignment_gets_its_experts_product() {
        // Two experts of 2 rows over n_in = 2 in f32; tokens route to (1, 0) and (1, 1).
        let w = Matrix::from_f32(vec![1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 3.0]);
        let x = [1.0, 2.0, 5.0, 7.0];
        let shape = ExpertShape { n_expert: 2, rows: 2, n_in: 2, k: 2, x_per_assignment: false };
        let bias = [0.0, 0.0, 0.5, 0.5];
        let y = experts_matmul(&x, &w, Some(&bias), &[1, 0, 1, 1], shape);
        assert_eq!(y, [2.5, 6.5, 1.0, 2.0, 10.5, 21.5, 10.5, 21.5]);
    }
}
