"""Read and rewrite an ONNX file's `metadata_props` without the `onnx` package.

The serving install carries onnxruntime but not onnx, yet `normalcy calibrate` must rewrite a
bundle's
metadata in place. ModelProto is a protobuf message; `metadata_props` is its repeated field 14 of
StringStringEntryProto (key = 1, value = 2). We walk the top-level fields on the wire, keep every
other field byte for byte, and replace only field 14.
"""

from __future__ import annotations

from .errors import BundleError

_METADATA_FIELD = 14
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            msg = "truncated protobuf varint"
            raise BundleError(msg)
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            msg = "malformed protobuf varint"
            raise BundleError(msg)


def _write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(data: bytes):
    """Yield (field_number, wire_type, start, payload_start, end) for each top-level field."""
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, pos = _read_varint(data, pos)
            payload = pos
        elif wire == _I64:
            payload, pos = pos, pos + 8
        elif wire == _I32:
            payload, pos = pos, pos + 4
        elif wire == _LEN:
            length, payload = _read_varint(data, pos)
            pos = payload + length
        else:
            msg = f"unsupported protobuf wire type {wire}: not an ONNX model file"
            raise BundleError(msg)
        if pos > len(data) or number == 0:
            msg = "truncated or corrupt ONNX file"
            raise BundleError(msg)
        yield number, wire, start, payload, pos


def read_metadata_props(data: bytes) -> dict[str, str]:
    """Return the model's metadata_props as a dict (later keys win, as in onnxruntime)."""
    props: dict[str, str] = {}
    for number, wire, _, payload, end in _fields(data):
        if number != _METADATA_FIELD or wire != _LEN:
            continue
        key = value = ""
        for inner_number, inner_wire, _, inner_payload, inner_end in _fields(data[payload:end]):
            if inner_wire != _LEN:
                continue
            text = data[payload + inner_payload : payload + inner_end].decode("utf-8")
            if inner_number == 1:
                key = text
            elif inner_number == 2:
                value = text
        props[key] = value
    return props


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _write_varint((number << 3) | _LEN) + _write_varint(len(payload)) + payload


def with_metadata_props(data: bytes, props: dict[str, str]) -> bytes:
    """Return the model bytes with metadata_props replaced by `props`; all else is unchanged."""
    kept = bytearray()
    for number, _, start, _, end in _fields(data):
        if number != _METADATA_FIELD:
            kept += data[start:end]
    for key, value in props.items():
        entry = _length_delimited(1, key.encode("utf-8")) + _length_delimited(
            2, value.encode("utf-8")
        )
        kept += _length_delimited(_METADATA_FIELD, entry)
    return bytes(kept)
