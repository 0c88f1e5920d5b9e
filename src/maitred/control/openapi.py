"""The OpenAPI 3.0 document of the admin API, served at /api/v1/openapi.json.

Written by hand next to the handlers and kept true by a schemathesis run
against a live balancer (tests/test_admin_openapi.py). The pool body lists
every key of the configuration file's pool (read from the model, so a new
pool setting appears here without an edit); nested settings are described in
the configuration documentation and validated by the same model.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from maitred import __version__
from maitred.config import ALGORITHMS, Pool

Schema = dict[str, Any]

_DURATION: Schema = {
    "oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
    "description": "seconds, or a string like 250ms, 5s, 1m",
}
_POOL_SCALARS: dict[str, Schema] = {
    "algorithm": {"type": "string", "enum": list(ALGORITHMS)},
    "hash_on": {"type": "string", "nullable": True},
    "balance_factor": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
    "slow_start": {**_DURATION, "nullable": True},
    "send_proxy_protocol": {"type": "string", "enum": ["v1", "v2"], "nullable": True},
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


_UNAUTHORIZED = _error("admin.token is set and the request has no valid Bearer token")


def _counter() -> Schema:
    return {"type": "integer", "minimum": 0}


def _number() -> Schema:
    return {"type": "number", "minimum": 0}


def _percentiles() -> Schema:
    value: Schema = {"type": "number", "minimum": 0, "nullable": True}
    return {
        "type": "object",
        "required": ["p50", "p95", "p99"],
        "properties": {"p50": value, "p95": value, "p99": value},
    }


def _server_schema() -> Schema:
    return {
        "type": "object",
        "required": [
            "id",
            "pool",
            "host",
            "port",
            "weight",
            "status",
            "active_connections",
            "requests_per_second",
            "avg_response_time_ms",
        ],
        "properties": {
            "id": {"type": "string", "example": "web-127.0.0.1-9001"},
            "pool": {"type": "string"},
            "host": {"type": "string"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "address": {"type": "string", "example": "127.0.0.1:9001"},
            "weight": {"type": "integer", "minimum": 1, "maximum": 1000},
            "backup": {"type": "boolean"},
            "health_check_path": {"type": "string", "nullable": True},
            "status": {
                "type": "string",
                "enum": ["healthy", "unhealthy", "draining", "maint"],
            },
            "state": {"type": "string", "enum": ["ready", "drain", "maint"]},
            "health": {
                "type": "string",
                "enum": ["healthy", "failing", "unhealthy", "recovering", "unchecked"],
            },
            "ejected": {"type": "boolean"},
            "removing": {"type": "boolean"},
            "available": {"type": "boolean"},
            "active_connections": _counter(),
            "requests_per_second": _number(),
            "avg_response_time_ms": _number(),
            "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "total_requests": _counter(),
            "responses": {
                "type": "object",
                "properties": {c: _counter() for c in ("1xx", "2xx", "3xx", "4xx", "5xx")},
            },
        },
    }


def _new_server_schema() -> Schema:
    return {
        "type": "object",
        "required": ["host", "port"],
        "additionalProperties": False,
        "properties": {
            "host": {"type": "string", "minLength": 1, "example": "127.0.0.1"},
            "port": {"type": "integer", "minimum": 1, "maximum": 65535, "example": 9004},
            "weight": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
            "health_check_path": {
                "type": "string",
                "pattern": "^/[^\\s]*$",
                "nullable": True,
                "example": "/health",
            },
            "pool": {
                "type": "string",
                "description": "required when the balancer has several pools",
            },
            "backup": {"type": "boolean", "nullable": True},
            "max_connections": {"type": "integer", "minimum": 1, "nullable": True},
        },
    }


def _new_pool_schema() -> Schema:
    properties: dict[str, Schema] = {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "example": "api"},
    }
    for key in Pool.model_fields:
        if key in _POOL_SCALARS:
            properties[key] = _POOL_SCALARS[key]
        elif key == "servers":
            properties[key] = {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["address"],
                    "properties": {
                        "address": {"type": "string", "example": "127.0.0.1:9101"},
                        "weight": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "backup": {"type": "boolean"},
                    },
                },
            }
        else:
            properties[key] = {
                "type": "object",
                "nullable": True,
                "description": f"the pool's {key} settings, as in the configuration file",
            }
    return {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": properties,
    }


def _pool_schema() -> Schema:
    return {
        "type": "object",
        "required": ["name", "algorithm", "servers"],
        "properties": {
            "name": {"type": "string"},
            "algorithm": {"type": "string", "enum": list(ALGORITHMS)},
            "servers": {"type": "array", "items": {"type": "string"}},
            "available_servers": _counter(),
            "active_connections": _counter(),
            "requests_per_second": _number(),
            "total_requests": _counter(),
            "retries": _counter(),
            "queued": _counter(),
            "avg_response_time_ms": _number(),
            "latency_ms": _percentiles(),
            "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "used_by": {"type": "array", "items": {"type": "string"}},
            "source": {"type": "string", "enum": ["file", "runtime"]},
            "config": {"type": "object", "description": "the pool as the configuration holds it"},
        },
    }


def _metrics_schema() -> Schema:
    return {
        "type": "object",
        "required": [
            "total_requests",
            "requests_per_second",
            "active_connections",
            "avg_response_time_ms",
            "error_rate",
            "backends_healthy",
            "backends_unhealthy",
        ],
        "properties": {
            "total_requests": _counter(),
            "requests_per_second": _number(),
            "active_connections": _counter(),
            "active_requests": _counter(),
            "avg_response_time_ms": _number(),
            "latency_ms": _percentiles(),
            "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
            "backends_healthy": _counter(),
            "backends_unhealthy": _counter(),
            "backends_draining": _counter(),
            "backends_maint": _counter(),
            "retries": _counter(),
            "window_seconds": _number(),
        },
    }


def _history_schema() -> Schema:
    return {
        "type": "object",
        "required": ["interval_seconds", "points"],
        "properties": {
            "interval_seconds": {"type": "integer"},
            "points": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["time", "requests_per_second", "error_rate", "latency_ms"],
                    "properties": {
                        "time": {"type": "number"},
                        "requests_per_second": _number(),
                        "error_rate": {"type": "number", "minimum": 0, "maximum": 1},
                        "latency_ms": _percentiles(),
                        "active_connections": _counter(),
                        "pools": {"type": "object", "additionalProperties": _number()},
                    },
                },
            },
        },
    }


def _path_parameter(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _body(schema: Schema) -> Schema:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


@cache
def openapi_document() -> dict[str, Any]:
    server_id = _path_parameter("id", "a server id, e.g. web-127.0.0.1-9001")
    pool_name = _path_parameter("name", "a pool name")
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "maitred admin API",
            "version": __version__,
            "description": (
                "Runtime control of a maitred load balancer. Changes persist in the state "
                "directory and survive restarts and reloads. With admin.token set, every "
                "/api route needs 'Authorization: Bearer <token>'."
            ),
        },
        "security": [{}, {"bearerAuth": []}],
        "paths": {
            "/api/v1/servers": {
                "get": {
                    "operationId": "listServers",
                    "summary": "Every server of every pool, with status and live figures",
                    "parameters": [
                        {
                            "name": "pool",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "only the servers of this pool",
                        }
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["servers"],
                                "properties": {
                                    "servers": {"type": "array", "items": _ref("Server")}
                                },
                            },
                            "the servers",
                        ),
                        "401": _UNAUTHORIZED,
                    },
                },
                "post": {
                    "operationId": "addServer",
                    "summary": "Add a server to a pool (persisted)",
                    "requestBody": _body(_ref("NewServer")),
                    "responses": {
                        "201": {
                            **_json(_ref("Server"), "the server, with its id"),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "400": _error("bad input; 'field' names the culprit"),
                        "401": _UNAUTHORIZED,
                        "409": _error("the pool already has this server"),
                        "500": _error("the state file could not be written"),
                    },
                },
            },
            "/api/v1/servers/{id}": {
                "parameters": [server_id],
                "get": {
                    "operationId": "getServer",
                    "summary": "One server",
                    "responses": {
                        "200": _json(_ref("Server"), "the server"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such server"),
                    },
                },
                "patch": {
                    "operationId": "patchServer",
                    "summary": "Change a server's weight and/or state (ready, drain, maint)",
                    "requestBody": _body(_ref("ServerPatch")),
                    "responses": {
                        "200": _json(_ref("Server"), "the server after the change"),
                        "400": _error("bad input; 'field' names the culprit"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such server"),
                        "409": _error("the server is being removed"),
                        "500": _error("the state file could not be written"),
                    },
                },
                "delete": {
                    "operationId": "deleteServer",
                    "summary": "Drain a server, then remove it (in-flight requests finish)",
                    "responses": {
                        "204": {"description": "draining; removed once idle or at drain_timeout"},
                        "401": _UNAUTHORIZED,
                        "404": _error("no such server"),
                        "500": _error("the state file could not be written"),
                    },
                },
            },
            "/api/v1/pools": {
                "get": {
                    "operationId": "listPools",
                    "summary": "Every pool, with live figures",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["pools"],
                                "properties": {"pools": {"type": "array", "items": _ref("Pool")}},
                            },
                            "the pools",
                        ),
                        "401": _UNAUTHORIZED,
                    },
                },
                "post": {
                    "operationId": "addPool",
                    "summary": "Add a pool (its settings as in the configuration file)",
                    "requestBody": _body(_ref("NewPool")),
                    "responses": {
                        "201": {
                            **_json(_ref("Pool"), "the pool"),
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "400": _error("bad input; 'field' names the culprit"),
                        "401": _UNAUTHORIZED,
                        "409": _error("a pool of that name exists"),
                        "500": _error("the state file could not be written"),
                    },
                },
            },
            "/api/v1/pools/{name}": {
                "parameters": [pool_name],
                "get": {
                    "operationId": "getPool",
                    "summary": "One pool, with its configuration",
                    "responses": {
                        "200": _json(_ref("Pool"), "the pool"),
                        "401": _UNAUTHORIZED,
                        "404": _error("no such pool"),
                    },
                },
                "delete": {
                    "operationId": "deletePool",
                    "summary": "Delete a pool no listener or route uses",
                    "responses": {
                        "204": {"description": "deleted"},
                        "401": _UNAUTHORIZED,
                        "404": _error("no such pool"),
                        "409": _error("a listener or route uses the pool"),
                        "500": _error("the state file could not be written"),
                    },
                },
            },
            "/api/v1/metrics": {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Totals; rates and averages over the last 10 seconds",
                    "responses": {
                        "200": _json(_ref("Metrics"), "the totals"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/metrics/history": {
                "get": {
                    "operationId": "getHistory",
                    "summary": "One point per second over the last minutes (the dashboard charts)",
                    "parameters": [
                        {
                            "name": "seconds",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 300},
                        }
                    ],
                    "responses": {
                        "200": _json(_ref("History"), "the points, oldest first"),
                        "400": _error("seconds out of range"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/reload": {
                "post": {
                    "operationId": "reload",
                    "summary": "Re-read the configuration file (like SIGHUP); runtime changes stay",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["reloaded"],
                                "properties": {
                                    "reloaded": {"type": "boolean"},
                                    "conflicts": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                            "reloaded",
                        ),
                        "401": _UNAUTHORIZED,
                        "409": _error("no configuration file is in use"),
                        "422": _error("the file was refused; 'problems' lists why"),
                    },
                }
            },
            "/api/v1/config": {
                "get": {
                    "operationId": "getConfig",
                    "summary": "The effective configuration (file + runtime changes), no secrets",
                    "responses": {
                        "200": _json({"type": "object"}, "the configuration"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/runtime": {
                "get": {
                    "operationId": "getRuntime",
                    "summary": "The runtime changes kept in the state file, and their conflicts",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["state_file", "changes", "conflicts"],
                                "properties": {
                                    "state_file": {"type": "string"},
                                    "changes": {"type": "object"},
                                    "conflicts": {"type": "array", "items": {"type": "string"}},
                                    "removing": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "the runtime changes",
                        ),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/cluster": {
                "get": {
                    "operationId": "getCluster",
                    "summary": "Active-active: this instance's link to the cluster (cluster key)",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["enabled"],
                                "properties": {
                                    "enabled": {"type": "boolean"},
                                    "redis": {"type": "string", "enum": ["up", "down"]},
                                    "node_id": {"type": "string"},
                                    "peers": {"type": "array", "items": {"type": "string"}},
                                    "version": {"type": "integer", "minimum": 0},
                                    "pending_changes": {"type": "integer", "minimum": 0},
                                },
                            },
                            "the cluster status ({enabled: false} without a cluster key)",
                        ),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": _json({"type": "object"}, "the OpenAPI document"),
                        "401": _UNAUTHORIZED,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "field": {"type": "string"},
                        "problems": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "Server": _server_schema(),
                "NewServer": _new_server_schema(),
                "ServerPatch": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {
                        "weight": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "state": {"type": "string", "enum": ["ready", "drain", "maint"]},
                    },
                },
                "Pool": _pool_schema(),
                "NewPool": _new_pool_schema(),
                "Metrics": _metrics_schema(),
                "History": _history_schema(),
            },
        },
    }
