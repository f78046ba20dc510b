"""Claim exit codes, kept compatible with existing claim clients (design.md)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    BAD_ARGUMENT = 1
    CLAIM_DIR = 2
    CLOUD_DISABLED = 3
    CANNOT_CONNECT = 4
    AGENT_NOT_TOLD = 5
    WRONG_USER = 6
    UNKNOWN_HTTP = 7
    INVALID_NODE_ID = 8
    INVALID_NODE_NAME = 9
    INVALID_ROOM_ID = 10
    INVALID_PUBLIC_KEY = 11
    FORBIDDEN = 12
    ALREADY_CLAIMED = 13
    PROCESSING_CLAIM = 14
    INTERNAL_SERVER_ERROR = 15
    GATEWAY_TIMEOUT = 16
    SERVICE_UNAVAILABLE = 17
    MACHINE_GUID = 18


ERROR_KEYS: dict[str, Exit] = {
    "ErrInvalidNodeID": Exit.INVALID_NODE_ID,
    "ErrInvalidNodeName": Exit.INVALID_NODE_NAME,
    "ErrInvalidRoomID": Exit.INVALID_ROOM_ID,
    "ErrInvalidPublicKey": Exit.INVALID_PUBLIC_KEY,
    "ErrForbidden": Exit.FORBIDDEN,
    "ErrAlreadyClaimed": Exit.ALREADY_CLAIMED,
    "ErrProcessingClaim": Exit.PROCESSING_CLAIM,
    "ErrInternalServerError": Exit.INTERNAL_SERVER_ERROR,
    "ErrGatewayTimeout": Exit.GATEWAY_TIMEOUT,
    "ErrServiceUnavailable": Exit.SERVICE_UNAVAILABLE,
}

# What to do next, per Cloud error key.
HINTS: dict[str, str] = {
    "ErrInvalidNodeID": "-id= must be a UUID (for a new identity: -id=$(uuidgen)).",
    "ErrInvalidNodeName": "give a valid host name with -hostname=.",
    "ErrInvalidRoomID": "check the War Room ids in -rooms= (copy them from the Cloud's "
    "Connect Nodes page).",
    "ErrInvalidPublicKey": "cloud.d/private.pem is unusable: remove cloud.d and claim again.",
    "ErrForbidden": "the claiming token is wrong or was rotated: copy the current one from "
    "the Space's Connect Nodes page.",
    "ErrAlreadyClaimed": "this node id is claimed with another key or in another Space; to "
    "claim it as a new node add -id=$(uuidgen).",
    "ErrProcessingClaim": "the Cloud could not process the claim now: try again.",
    "ErrInternalServerError": "the Cloud failed: try again, and tell its admin if it persists.",
    "ErrGatewayTimeout": "the Cloud timed out: try again.",
    "ErrServiceUnavailable": "the Cloud is unavailable: try again later.",
}

# When the body has no known key, a 5xx status still says which kind it is.
STATUS_EXITS: dict[int, Exit] = {
    500: Exit.INTERNAL_SERVER_ERROR,
    502: Exit.SERVICE_UNAVAILABLE,
    503: Exit.SERVICE_UNAVAILABLE,
    504: Exit.GATEWAY_TIMEOUT,
}
