//! The paged KV cache, and writing new tokens' keys and values into it.
//!
//! Layout, per layer: a pool of `n_pages` pages for keys and another for values, f16,
//! [page][n_head_kv][PAGE_SIZE][head_dim]: one page holds PAGE_SIZE consecutive positions of one
//! sequence, and the PAGE_SIZE x head_dim block of one KV head is contiguous (4 KiB at head_dim
//! 128), so attention kernels copy a head's page with whole 16-byte transfers. The block table
//! [n_seq, max_pages] u32 maps page i of a sequence (positions 16i..16i + 15) to a pool page;
//! unallocated entries hold `NO_PAGE`. Every kernel checks table entries against the pool: a write
//! to a missing page is dropped, and a read of one sees zeros, so a bad table can give wrong
//! numbers but never an access outside the pool.
//!
//! kv_write_paged: key[page(s_t, p_t)][kv_head][p_t % PAGE_SIZE][d] = f16(new_keys[t][kv_head][d]),
//! and the same for values, for tokens t of a batch, token t belonging to the sequence (block table
//! row) s_t at position p_t; both arrays are read on the device, so a captured graph replays.
//! Launch: grid-stride, 256 threads, one thread per 4 consecutive elements of a row.
//! Cost: reads 8 bytes and writes 4 per element of K and V: memory-bound, a few microseconds for a
//! decode step.

use crate::device::{f32_to_f16, global_idx, grid_size, load_f32x4};

/// Positions per page. The host's twin is `host::attention::PAGE_SIZE`.
pub const PAGE_SIZE: usize = 16;

/// The pool page that holds `position` of the sequence whose block-table row is `table_row`, or
/// None where the table has no page for it (beyond `max_pages`, or an entry outside the pool).
#[inline(always)]
pub unsafe fn page_of(
    table_row: *const u32,
    position: usize,
    max_pages: usize,
    n_pages: usize,
) -> Option<usize> {
    let index = position / PAGE_SIZE;
    if index >= max_pages {
        return None;
    }
    let page = unsafe { *table_row.add(index) } as usize;
    if page < n_pages { Some(page) } else { None }
}

/// Offset in elements of (page, kv_head, slot 0) in a pool.
#[inline(always)]
pub fn page_offset(page: usize, kv_head: usize, n_head_kv: usize, head_dim: usize) -> usize {
    (page * n_head_kv + kv_head) * PAGE_SIZE * head_dim
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn kv_write_paged(
    new_keys: *const f32,
    new_values: *const f32,
    key_pages: *mut u16,
    value_pages: *mut u16,
    block_table: *const u32,
    token_seq: *const u32,
    token_position: *const u32,
    n_tokens: u32,
    n_head_kv: u32,
    head_dim: u32,
    n_pages: u32,
    n_seq: u32,
    max_pages: u32,
) {
    let (n_head_kv, head_dim) = (n_head_kv as usize, head_dim as usize);
    let quads_per_row = n_head_kv * head_dim / 4;
    let total = n_tokens as usize * quads_per_row;
    let mut i = global_idx();
    while i < total {
        let (token, quad) = (i / quads_per_row, i % quads_per_row);
        let (seq, position) = unsafe { (*token_seq.add(token), *token_position.add(token) as usize) };
        if seq < n_seq {
            let table_row = unsafe { block_table.add(seq as usize * max_pages as usize) };
            let page = unsafe { page_of(table_row, position, max_pages as usize, n_pages as usize) };
            if let Some(page) = page {
                let (kv_head, d) = (4 * quad / head_dim, 4 * quad % head_dim);
                let slot =
                    page_offset(page, kv_head, n_head_kv, head_dim) + position % PAGE_SIZE * head_dim + d;
                let source = token * n_head_kv * head_dim + 4 * quad;
                unsafe {
                    store_f16x4(key_pages.add(slot), load_f32x4(new_keys.add(source)));
                    store_f16x4(value_pages.add(slot), load_f32x4(new_values.add(source)));
                }
            }
        }
        i += grid_size();
    }
}

/// Four f32 rounded to f16 (to nearest even) as one 8-byte store; `destination` 8-byte aligned.
#[inline(always)]
unsafe fn store_f16x4(destination: *mut u16, v: [f32; 4]) {
    let pack = |a: f32, b: f32| f32_to_f16(a) as u64 | (f32_to_f16(b) as u64) << 16;
    unsafe { *(destination as *mut u64) = pack(v[0], v[1]) | pack(v[2], v[3]) << 32 };
}
