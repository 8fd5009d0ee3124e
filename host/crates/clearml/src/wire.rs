//! The ClearML response envelope and the error codes both sides agree on
//! (see docs/clearml-api.md). Every response, success or error, is
//! `{"meta": {...}, "data": {...}}`; the SDK rejects one without `meta`.

use serde::{Deserialize, Serialize};

/// The API version flockd speaks and its server claims.
pub const API_VERSION: &str = "2.23";
/// What the compatible server reports as its version.
pub const SERVER_VERSION: &str = "2.0.0";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub requested_version: Option<String>,
    #[serde(default)]
    pub actual_version: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub trx: String,
    #[serde(default)]
    pub endpoint: Endpoint,
    #[serde(default)]
    pub result_code: u16,
    #[serde(default)]
    pub result_subcode: u32,
    #[serde(default)]
    pub result_msg: String,
    #[serde(default)]
    pub error_stack: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Envelope<T> {
    pub meta: Meta,
    #[serde(default)]
    pub data: Option<T>,
}

/// `(http status = result_code, result_subcode)` pairs used by the real server.
pub mod codes {
    pub const BAD_REQUEST: (u16, u32) = (400, 0);
    pub const MALFORMED_FIELDS: (u16, u32) = (400, 11);
    pub const MISSING_FIELD: (u16, u32) = (400, 12);
    pub const INVALID_TASK_ID: (u16, u32) = (400, 101);
    pub const INVALID_TASK_STATUS: (u16, u32) = (400, 110);
    pub const INVALID_PROJECT_ID: (u16, u32) = (400, 401);
    pub const INVALID_QUEUE_ID: (u16, u32) = (400, 701);
    pub const QUEUE_NOT_EMPTY: (u16, u32) = (400, 702);
    pub const NO_DEFAULT_QUEUE: (u16, u32) = (400, 705);
    pub const DUPLICATE: (u16, u32) = (400, 801);
    pub const INVALID_WORKER_ID: (u16, u32) = (400, 1001);
    pub const MISSING_CREDENTIALS: (u16, u32) = (401, 20);
    pub const INVALID_CREDENTIALS: (u16, u32) = (401, 22);
    pub const INVALID_TOKEN: (u16, u32) = (401, 30);
    pub const UNKNOWN_ENDPOINT: (u16, u32) = (404, 0);
    pub const INTERNAL: (u16, u32) = (500, 0);
}
