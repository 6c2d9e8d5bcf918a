//! Small conversions shared by the resource modules.

use std::time::Duration;

use crate::error::{Result, ValidationError};

/// A proto `Duration` as a std `Duration`; negative values are invalid everywhere Envoy
/// uses durations.
pub(crate) fn duration(d: &crate::pb::google::protobuf::Duration, path: &str) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(ValidationError::new(path, "duration must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional proto `Duration`, with Envoy's convention that zero means "disabled".
pub(crate) fn optional_timeout(
    d: Option<&crate::pb::google::protobuf::Duration>,
    path: &str,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = duration(d, path)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

/// Decodes an `Any` into the expected message type, naming the field on mismatch.
pub(crate) fn unpack_any<T: prost::Message + Default>(
    any: &crate::pb::google::protobuf::Any,
    expected_url: &str,
    path: &str,
) -> Result<T> {
    if any.type_url != expected_url {
        return Err(ValidationError::new(
            path,
            format!(
                "unsupported type {:?}, expected {:?}",
                any.type_url, expected_url
            ),
        ));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| ValidationError::new(path, format!("cannot decode {expected_url}: {e}")))
}

/// A hash of a message that is equal for equal messages: map fields (which prost keeps in
/// hash maps, in no fixed order) are hashed in key order, through the message's canonical
/// proto3-JSON.
pub(crate) fn fingerprint<T: prost::Message>(message: &T, full_name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let bytes = message.encode_to_vec();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match crate::decode::bytes_to_json(&bytes, full_name) {
        Ok(json) => json.to_string().hash(&mut hasher),
        Err(_) => bytes.hash(&mut hasher),
    }
    hasher.finish()
}
