"""Authentication: secrets in, tokens out, kept fresh.

The front door is `TokenSource`; the rest is what callers name in type hints. Nothing here
imports keystoneauth1 until a token must come from Keystone, and nothing here knows about
jobs or staging.
"""

from allasrun.auth.credstore import job_s3_keys
from allasrun.auth.identity import (
    SECRET_VARIABLES,
    AppCredential,
    Identity,
    Password,
    Target,
    keystone_at_hand,
)
from allasrun.auth.s3keys import S3Keys, find_keys
from allasrun.auth.schedule import Schedule
from allasrun.auth.source import TokenSource
from allasrun.auth.token import Token, duration, utc_text

__all__ = [
    "SECRET_VARIABLES",
    "AppCredential",
    "Identity",
    "Password",
    "S3Keys",
    "Schedule",
    "Target",
    "Token",
    "TokenSource",
    "duration",
    "find_keys",
    "job_s3_keys",
    "keystone_at_hand",
    "utc_text",
]
