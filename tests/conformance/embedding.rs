//! gpu/src/embedding.rs against engine::cpu::embedding.

use crate::{config, gpu, poisoned, random_values, size, storage, with_weights};
use engine::cpu::embedding;
use proptest::prelude::*;

proptest! {
    #![proptest_config(config(40))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn embedding_and_position_add_match_cpu(vocab in 1usize..3000, dim in size(4096), n_tokens in 1usize..40, storage in storage(), seed: u64) {
        let table = storage.round(&random_values(seed, vocab * dim, 1.0));
        let ids: Vec<u32> = random_values(seed ^ 3, n_tokens, 1.0).iter().map(|v| ((v + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32).collect();
        let mut expected = vec![0.0; n_tokens * dim];
        embedding::embedding(&table, &ids, &mut expected, dim);
        embedding::position_add(&table, &ids, &mut expected, dim);

        let gpu = gpu();
        let ids_gpu = gpu.upload(&ids).unwrap();
        let mut out = poisoned(n_tokens * dim);
        with_weights!(storage, &table, |t| {
            gpu.embedding(t, &ids_gpu, &mut out, dim).unwrap();
            gpu.position_add(t, &ids_gpu, &mut out, dim).unwrap();
        });
        // A gather and one addition of the same values: exact.
        assert_eq!(gpu.download(&out).unwrap(), expected);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn out_of_range_ids_give_nan_rows_not_stray_reads() {
    let gpu = gpu();
    let table = gpu.upload(&[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let ids = gpu.upload(&[1u32, 2, 0]).unwrap();
    let mut out = poisoned(6);
    gpu.embedding(&table, &ids, &mut out, 2).unwrap();
    let out = gpu.download(&out).unwrap();
    assert_eq!(&out[..2], &[3.0, 4.0]);
    assert!(out[2].is_nan() && out[3].is_nan());
    assert_eq!(&out[4..], &[1.0, 2.0]);
}
