//! `GET /v1/models` and `GET /v1/models/{id}`, in the client's dialect: the concrete names
//! (routes and aliases) in config order.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use lattice_providers::Dialect;

use crate::body::{AccessLog, ResponseBody};
use crate::reply::{Rejection, plain, reject};
use crate::router::Router;

pub(crate) fn model_object(
    router: &Router,
    path: &str,
    dialect: Dialect,
    rid: HeaderValue,
    log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let id = path.trim_start_matches("/v1/models/");
    match router.listed().find(|(n, _)| *n == id) {
        Some((name, target)) => {
            let obj = match dialect {
                Dialect::Anthropic => anthropic_model(name),
                Dialect::OpenAi | Dialect::Gemini | Dialect::Ollama => {
                    openai_model(name, &target.primary().upstream.name)
                }
            };
            plain(
                StatusCode::OK,
                "application/json",
                Bytes::from(obj.to_string()),
                rid,
                log,
            )
        }
        None => reject(Rejection::UnknownModel(id.to_string()), dialect, rid, log),
    }
}

fn openai_model(name: &str, owner: &str) -> serde_json::Value {
    serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": owner})
}

fn anthropic_model(name: &str) -> serde_json::Value {
    serde_json::json!({"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"})
}

/// `GET /v1/models` in both dialects, built once.
pub(crate) fn model_lists(router: &Router) -> (Bytes, Bytes) {
    let openai: Vec<_> = router
        .listed()
        .map(|(n, t)| openai_model(n, &t.primary().upstream.name))
        .collect();
    let anthropic: Vec<_> = router.listed().map(|(n, _)| anthropic_model(n)).collect();
    let first = router.listed().next().map(|(n, _)| n);
    let last = router.listed().last().map(|(n, _)| n);
    let o = serde_json::json!({"object": "list", "data": openai});
    let a = serde_json::json!({"data": anthropic, "has_more": false, "first_id": first, "last_id": last});
    (Bytes::from(o.to_string()), Bytes::from(a.to_string()))
}

/// Ollama's `GET /api/tags`: the listed models, in the shape its SDKs parse (`models[]` with
/// `name`, `model`, `modified_at`, `size`, `digest`, `details`). Sizes and digests describe
/// local weights, which a gateway route has none of: zero and empty.
pub(crate) fn ollama_tags(router: &Router) -> Bytes {
    let models: Vec<_> = router
        .listed()
        .map(|(n, _)| {
            serde_json::json!({"name": n, "model": n, "modified_at": "1970-01-01T00:00:00Z", "size": 0,
                               "digest": "", "details": {"format": "", "family": "", "families": null,
                                                         "parameter_size": "", "quantization_level": ""}})
        })
        .collect();
    Bytes::from(serde_json::json!({ "models": models }).to_string())
}
