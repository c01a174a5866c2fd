//! `[translation]`: what a call translated to another dialect does with what the target cannot
//! say (`lattice_providers::translate`). `unsupported` applies to fields whose loss changes
//! the call's meaning (refused by default); hints the target does without are dropped and
//! named in the `x-lattice-dropped-fields` response header. `[translation.fields]` sets one
//! field's fate by the name the refusal gives (`logprobs = "drop"`).

use std::collections::BTreeMap;

use lattice_providers::canonical::Disposition;
use lattice_providers::translate::Rules;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTranslation {
    #[serde(default)]
    unsupported: Option<RawDisposition>,
    #[serde(default)]
    fields: BTreeMap<String, RawDisposition>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawDisposition {
    Refuse,
    Drop,
}

impl From<RawDisposition> for Disposition {
    fn from(d: RawDisposition) -> Disposition {
        match d {
            RawDisposition::Refuse => Disposition::Refuse,
            RawDisposition::Drop => Disposition::Drop,
        }
    }
}

pub fn validate(raw: RawTranslation) -> Result<Rules, (String, String)> {
    if let Some(f) = raw.fields.keys().find(|f| f.trim().is_empty()) {
        return Err((
            format!("translation.fields.\"{f}\""),
            "a field name must not be empty".into(),
        ));
    }
    Ok(Rules {
        unsupported: raw.unsupported.map_or(Disposition::Refuse, Into::into),
        fields: raw.fields.into_iter().map(|(k, v)| (k, v.into())).collect(),
    })
}
