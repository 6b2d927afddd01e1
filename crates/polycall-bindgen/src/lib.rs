//! # polycall-bindgen
//!
//! Typed bindings from one interface. The input is an interface schema (TOML: services,
//! methods, typed messages, docs, idempotency) or a live runtime's `sys.describe`; the
//! output comes from minijinja template sets embedded in the crate, one per target
//! (`python`, `typescript`, `markdown`), so a new language is a new template set.
//! The format and the template context are specified in `docs/bindgen.md`.
//!
//! ```
//! let schema = polycall_bindgen::parse_schema(
//!     r#"
//!     format = 1
//!     [[service]]
//!     name = "greet"
//!     [[service.method]]
//!     name = "hello"
//!     input = "Name"
//!     output = "bytes"
//!     [[message]]
//!     name = "Name"
//!     [[message.field]]
//!     name = "who"
//!     type = "string"
//!     "#,
//!     "greet.toml",
//! )?;
//! let files = polycall_bindgen::generate(&schema, "python")?;
//! assert!(files.iter().any(|f| f.path.ends_with("greet.py")));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod describe;
mod generate;
pub mod ident;
pub mod schema;

pub use describe::{DescribeError, from_describe};
pub use generate::{
    GENERATOR, GenerateError, GeneratedFile, TargetInfo, generate, message_hint, targets,
};
pub use schema::{
    Diagnostic, Field, FieldType, Message, Method, MethodType, Schema, SchemaError, Service,
    TypeError, parse as parse_schema,
};
