//! What a component file declares: its imports and exports, read from the
//! compiled component's type (for `flockd policy inspect`). Says nothing about
//! whether it is a valid policy; `PolicyEngine::compile` decides that.

use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, types::ComponentFunc};

use crate::engine::{LoadError, PolicyEngine};

/// The package every policy world version lives in.
const POLICY_PACKAGE: &str = "flockd:policy/";

/// One import or export, rendered for people.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    pub name: String,
    /// `func(settings: string) -> result<_, string>`, `instance`, `module`, ...
    pub kind: String,
    /// For an instance: the names it exports (functions and types).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ComponentShape {
    pub imports: Vec<Item>,
    pub exports: Vec<Item>,
}

impl ComponentShape {
    /// The `flockd:policy` version the component was built against, from the
    /// interfaces it imports (`flockd:policy/host@0.1.0` gives "0.1.0").
    pub fn policy_version(&self) -> Option<&str> {
        self.imports.iter().find_map(|i| i.name.strip_prefix(POLICY_PACKAGE)?.split_once('@').map(|(_, v)| v))
    }

    /// The world it appears to implement: the policy world when it imports a
    /// `flockd:policy` interface and exports `configure` and `decide`.
    pub fn world(&self) -> Option<String> {
        let version = self.policy_version()?;
        let exports = |name: &str| self.exports.iter().any(|e| e.name == name);
        (exports("configure") && exports("decide")).then(|| format!("flockd:policy/policy@{version}"))
    }
}

impl PolicyEngine {
    /// Parses and compiles `bytes` as a component and lists what it imports
    /// and exports, without linking it.
    pub fn describe(&self, bytes: &[u8]) -> Result<ComponentShape, LoadError> {
        if bytes.is_empty() {
            return Err(LoadError::Empty);
        }
        let engine = self.wasmtime_engine();
        let component = Component::from_binary(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let ty = component.component_type();
        let item = |name: &str, ty: ComponentItem| -> Item {
            let members = match &ty {
                ComponentItem::ComponentInstance(instance) => {
                    instance.exports(engine).map(|(n, _)| n.to_string()).collect()
                }
                _ => Vec::new(),
            };
            Item { name: name.to_string(), kind: describe_item(&ty), members }
        };
        Ok(ComponentShape {
            imports: ty.imports(engine).map(|(name, ext)| item(name, ext.ty)).collect(),
            exports: ty.exports(engine).map(|(name, ext)| item(name, ext.ty)).collect(),
        })
    }
}

fn describe_item(item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentFunc(f) => describe_func(f),
        ComponentItem::CoreFunc(_) => "core func".into(),
        ComponentItem::Module(_) => "core module".into(),
        ComponentItem::Component(_) => "component".into(),
        ComponentItem::ComponentInstance(_) => "instance".into(),
        ComponentItem::Type(t) => format!("type {}", describe_type(t)),
        ComponentItem::Resource(_) => "resource".into(),
    }
}

fn describe_func(f: &ComponentFunc) -> String {
    let params: Vec<String> = f.params().map(|(name, ty)| format!("{name}: {}", describe_type(&ty))).collect();
    let results: Vec<String> = f.results().map(|ty| describe_type(&ty)).collect();
    match results.as_slice() {
        [] => format!("func({})", params.join(", ")),
        [one] => format!("func({}) -> {one}", params.join(", ")),
        many => format!("func({}) -> ({})", params.join(", "), many.join(", ")),
    }
}

/// A shallow rendering: records and variants carry no names in the compiled
/// type, so they show as their kind.
fn describe_type(ty: &Type) -> String {
    let or_blank = |t: Option<Type>| t.map(|t| describe_type(&t)).unwrap_or_else(|| "_".into());
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", describe_type(&l.ty())),
        Type::Option(o) => format!("option<{}>", describe_type(&o.ty())),
        Type::Result(r) => format!("result<{}, {}>", or_blank(r.ok()), or_blank(r.err())),
        Type::Record(r) => format!("record{{{}}}", r.fields().map(|f| f.name).collect::<Vec<_>>().join(", ")),
        Type::Tuple(_) => "tuple".into(),
        Type::Variant(_) => "variant".into(),
        Type::Enum(_) => "enum".into(),
        Type::Flags(_) => "flags".into(),
        Type::Own(_) | Type::Borrow(_) => "resource handle".into(),
        _ => "other".into(),
    }
}
