"""The OpenAPI description beyond what FastAPI derives from the routes: the v2 inference request
body (the route reads it by hand) and the security schemes of the scoring routes.

`X-API-Key` and `Authorization: Bearer` carry the same key. The schemes are always described (so
Swagger UI offers "Authorize"); the scoring operations require them only when the server has a key.
"""

from __future__ import annotations

from fastapi import FastAPI

from .v2_requests import OUTPUTS

SECURITY_SCHEMES = {
    "APIKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "the server's API key (NORMALCY_API_KEY), when it has one",
    },
    "Bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "the same API key as `Authorization: Bearer KEY`",
    },
}
SCORING_SECURITY = [{"APIKey": []}, {"Bearer": []}]  # either one
SCORING_OPERATIONS = (
    ("/v1/models/{name}/score", "post"),
    ("/v2/models/{name}/infer", "post"),
    ("/v2/models/{name}/versions/{version}/infer", "post"),
)

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "description": "the model's input name (see its metadata)"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "description": "UINT8 (images), INT64 (class labels)"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
        "data": {"type": "array", "description": "the values, flat or nested, row-major"},
    },
}
_OUTPUT = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "enum": list(OUTPUTS)},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {
                "score": {"type": "string", "description": "which of the bundle's scores"},
                "alpha": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "binary_data_output": {"type": "boolean"},
            },
        },
        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
        "outputs": {"type": "array", "items": _OUTPUT},
    },
}
V2_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "an inference request; with the binary tensor extension the JSON header "
        "is followed by the raw tensor bytes, and Inference-Header-Content-Length gives its size",
        "content": {
            "application/json": {"schema": _INFER_REQUEST},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def install_openapi(app: FastAPI, *, key_required: bool) -> None:
    """Add the security schemes to the app's OpenAPI description (FastAPI builds it once and
    caches it; adding them again to the cached one changes nothing)."""
    build = app.openapi

    def openapi() -> dict:
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes.update(SECURITY_SCHEMES)
        if key_required:
            for path, method in SCORING_OPERATIONS:
                operation = schema["paths"].get(path, {}).get(method)
                if operation is not None:
                    operation["security"] = SCORING_SECURITY
        return schema

    app.openapi = openapi
