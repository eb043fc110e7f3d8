use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::value::{DynObject, Enumerator, Object, ObjectRepr, Value};

/// This object exists for the `namespace` function.
///
/// It's special in that it behaves like a dictionary in many ways but it's the only
/// object that can be used with `{% set %}` assignments.  This is used internally
/// in the vm via downcasting.
///
/// Patched (see `PATCHES.md`): a namespace is a plain object, as in Jinja2, not a map.  It is
/// the one value a template can change after making it, so the one way to make a value that
/// contains itself (`{% set ns.x = [ns] %}`); comparisons and other walks over maps would
/// follow such a value without end.  Attributes, `ns[key]`, iteration over the keys and `length`
/// work as before; namespaces compare by identity; printing one prints its attributes as a map
/// does, under the print limits of `value::limits`.
#[derive(Debug, Default)]
pub(crate) struct Namespace {
    data: Mutex<BTreeMap<Arc<str>, Value>>,
}

impl Object for Namespace {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.data.lock().unwrap().get(some!(key.as_str())).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let data = self.data.lock().unwrap();
        let keys = data.keys().cloned().map(Value::from);
        Enumerator::Values(keys.collect())
    }

    fn custom_cmp(self: &Arc<Self>, other: &DynObject) -> Option<Ordering> {
        let other = other.downcast_ref::<Namespace>()?;
        Some((Arc::as_ptr(self) as usize).cmp(&(other as *const Namespace as usize)))
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A copy: a value inside may be this namespace, whose lock printing it would take.
        let entries: Vec<(Value, Value)> = self
            .data
            .lock()
            .unwrap()
            .iter()
            .map(|(key, value)| (Value::from(key.clone()), value.clone()))
            .collect();
        let mut dbg = f.debug_map();
        for (key, value) in &entries {
            dbg.entry(key, value);
        }
        dbg.finish()
    }
}

impl Namespace {
    pub(crate) fn set_value(&self, key: &str, value: Value) {
        self.data.lock().unwrap().insert(key.into(), value);
    }
}
