//! Limits on the values a template builds and prints.
//!
//! Not part of upstream minijinja: patched in for templates that come from untrusted files
//! (see `PATCHES.md` at the root of this crate).  Upstream bounds `'x' * n`, `range()` and
//! recursion, but a template of a few dozen instructions could still double a string on every
//! pass of a loop, or print a value that contains itself, until memory or the stack ran out;
//! and fuel counted instructions, whatever the size of the strings they made or wrote.

use std::cell::Cell;
use std::fmt::{self, Write};

use crate::error::{Error, ErrorKind};
use crate::value::{DynObject, ObjectRepr, Value};

/// The longest string that `~`, `+` and `*` produce, and the longest text that printing one
/// value may produce (16 MiB).
pub(crate) const MAX_STRING_LEN: usize = 16 << 20;

/// The most items that `seq * n`, `batch` and `slice` make (a million values, 24 MiB).
pub(crate) const MAX_SEQ_LEN: usize = 1 << 20;

/// The largest width, precision or argument index a `format` spec may give.
pub(crate) const MAX_FORMAT_NUMBER: usize = 1 << 16;

/// How deeply nested values may be printed (a value that contains itself is nested without end).
/// Pretty printing (`|pprint`) costs time in proportion to the depth of every byte it writes.
pub(crate) const MAX_PRINT_DEPTH: usize = 100;

/// How many nested values one instruction's comparisons (`==`, `in`, `sort`, `unique`, ...) may
/// visit.  Values that share their parts (`[x, x]` forty times over) are small but would take
/// exponential time to compare; past this a comparison stops, and the instruction fails.
pub(crate) const MAX_VISITS: usize = 1 << 20;

/// With fuel on, the strings and lists an instruction makes, the text it writes and the text of
/// the values it prints cost one unit of fuel per this many bytes (a list item counts as the
/// size of a value), on top of the one unit for the instruction (see `vm::fuel`).  A value
/// visited by a comparison costs one unit.
pub(crate) const BYTES_PER_FUEL: usize = 64;

#[derive(Clone, Copy)]
enum Exceeded {
    Depth,
    Length,
    Visits,
}

thread_local! {
    static PRINT_DEPTH: Cell<usize> = const { Cell::new(0) };
    static EXCEEDED: Cell<Option<Exceeded>> = const { Cell::new(None) };
    static PRINTED: Cell<usize> = const { Cell::new(0) };
    static DEEPEST: Cell<usize> = const { Cell::new(0) };
    static VISITS: Cell<usize> = const { Cell::new(0) };
    static ITERATED: Cell<usize> = const { Cell::new(0) };
}

/// A `fmt::Write` target that fails once it would grow past `cap` bytes.
pub(crate) struct CappedString {
    pub(crate) buf: String,
    cap: usize,
    pub(crate) full: bool,
}

impl CappedString {
    pub(crate) fn new(cap: usize) -> CappedString {
        CappedString {
            buf: String::new(),
            cap,
            full: false,
        }
    }
}

impl Write for CappedString {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.buf.len() + s.len() > self.cap {
            self.full = true;
            return Err(fmt::Error);
        }
        self.buf.push_str(s);
        Ok(())
    }
}

/// The error for a string operation whose result would be longer than [`MAX_STRING_LEN`].
pub(crate) fn string_too_long(op: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("the result of {op} would be longer than {MAX_STRING_LEN} bytes"),
    )
}

/// The error for an operation that would make more than [`MAX_SEQ_LEN`] items.
pub(crate) fn sequence_too_long(op: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("the result of {op} would have more than {MAX_SEQ_LEN} items"),
    )
}

/// Restores the print depth when a print returns (or unwinds).
struct DepthGuard(usize);

impl Drop for DepthGuard {
    fn drop(&mut self) {
        PRINT_DEPTH.with(|d| d.set(self.0));
    }
}

struct Render<'a>(&'a DynObject);

impl fmt::Display for Render<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.render(f)
    }
}

/// Prints an object: every `Display` and `Debug` of a value that holds an object comes here.
///
/// Printing cannot return an error to its caller (`to_string` would panic on one), so a print
/// that goes past a limit is cut short and the limit is recorded for the VM, which fails the
/// instruction that printed (see [`take_error`]).  Nesting deeper than [`MAX_PRINT_DEPTH`] prints
/// as `...`.  The outermost print goes into a buffer of at most [`MAX_STRING_LEN`] bytes; a text
/// that would be longer is not written at all (and printing it stops as soon as it is full, so
/// a value whose text would be exponentially long costs no more than that).
pub(crate) fn render_object(obj: &DynObject, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let depth = PRINT_DEPTH.with(|d| d.get());
    if depth >= MAX_PRINT_DEPTH {
        record(Exceeded::Depth);
        return f.write_str("...");
    }
    PRINT_DEPTH.with(|d| d.set(depth + 1));
    let _restore = DepthGuard(depth);
    DEEPEST.with(|d| {
        d.set(if depth == 0 {
            1
        } else {
            d.get().max(depth + 1)
        })
    });
    if depth > 0 {
        return obj.render(f);
    }
    // Patched (chat_template fuzz finding 8): once a print of this instruction went past a limit,
    // the instruction fails when it ends, so later prints in it write nothing at once. Each cost
    // up to MAX_STRING_LEN bytes of work and wrote nothing, and `format` or `join` went on to the
    // next: `('%s' * 515)|format(*([t] * 1000))` with a tuple `t` too long to print ran minutes.
    if EXCEEDED.with(|e| e.get().is_some()) {
        return Ok(());
    }
    let mut buf = CappedString::new(MAX_STRING_LEN);
    let rv = if f.alternate() {
        write!(buf, "{:#}", Render(obj))
    } else {
        write!(buf, "{}", Render(obj))
    };
    // Pretty printing (`{:#?}`, `|pprint`) passes every byte through one indenting adapter per
    // level: it costs its length times the depth it reached.
    let cost = if f.alternate() {
        buf.buf.len().saturating_mul(DEEPEST.with(|d| d.get()))
    } else {
        buf.buf.len()
    };
    PRINTED.with(|p| p.set(p.get().saturating_add(cost)));
    if buf.full {
        record(Exceeded::Length);
        return Ok(());
    }
    rv.and_then(|()| f.write_str(&buf.buf))
}

/// Counts one value (an object) visited by a comparison.  False once one instruction has
/// visited more than [`MAX_VISITS`]: the comparison then gives any answer at once (it is not a
/// total order any more: `utils::safe_sort` copes), and the instruction fails.
pub(crate) fn visit() -> bool {
    let visits = VISITS.with(|v| {
        let n = v.get().saturating_add(1);
        v.set(n);
        n
    });
    if visits > MAX_VISITS {
        record(Exceeded::Visits);
        return false;
    }
    true
}

/// The work done on this thread since the last call, in bytes for fuel: the text that prints
/// made, and `BYTES_PER_FUEL` for each value that comparisons visited.
pub(crate) fn take_work() -> usize {
    let printed = PRINTED.with(|p| p.replace(0));
    let visits = VISITS.with(|v| v.replace(0));
    let iterated = ITERATED.with(|i| i.replace(0));
    printed
        .saturating_add(visits.saturating_mul(BYTES_PER_FUEL))
        .saturating_add(iterated.saturating_mul(std::mem::size_of::<Value>()))
}

/// Patched (chat_template fuzz finding 9): counts one item taken from an iteration
/// ([`ValueIter`](crate::value::ValueIter)), charged in fuel as the size of a value. A filter
/// that walks a list (`join`, `sum`, `sort`, ...) was one instruction whatever the list's
/// length, so a loop of them over a long list (`[''] * 300000`, whose text is empty) cost
/// almost no fuel and ran for minutes.
pub(crate) fn iterated() {
    ITERATED.with(|i| i.set(i.get().saturating_add(1)));
}

fn record(exceeded: Exceeded) {
    EXCEEDED.with(|e| {
        if e.get().is_none() {
            e.set(Some(exceeded));
        }
    });
}

/// The limit that a print on this thread went past since the last call, as an error.  The VM
/// calls this after every instruction, and once before it starts (with [`take_work`]).
pub(crate) fn take_error() -> Result<(), Error> {
    match EXCEEDED.with(|e| e.take()) {
        None => Ok(()),
        Some(Exceeded::Depth) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "cannot print a value nested more than {MAX_PRINT_DEPTH} levels deep \
                 (or a value that contains itself)"
            ),
        )),
        Some(Exceeded::Length) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot print a value whose text is longer than {MAX_STRING_LEN} bytes"),
        )),
        Some(Exceeded::Visits) => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "cannot compare values this large: more than {MAX_VISITS} nested values \
                 visited by one operation"
            ),
        )),
    }
}

/// The bytes a value that an instruction made takes, as far as fuel is concerned: a string's
/// length, or a list's items times the size of a value (lazy sequences count as nothing).
pub(crate) fn size_of(value: &Value) -> usize {
    if let Some(s) = value.as_str() {
        s.len()
    } else if let Some(obj) = value.as_object() {
        match obj.repr() {
            ObjectRepr::Seq => obj
                .enumerator_len()
                .map_or(0, |n| n.saturating_mul(std::mem::size_of::<Value>())),
            _ => 0,
        }
    } else {
        0
    }
}
