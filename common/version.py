"""The runner's version, reported by /version and in the fleet registry."""

import re

__version__ = "0.1.0"

# What github.com/Masterminds/semver/v3 NewVersion accepts: go-livepeer parses runner versions
# with it and compares them with the minimum a gateway asks of a model's runner
# (core/capabilities.go isVersionCompatible); a version it cannot parse never qualifies.
SEMVER = re.compile(r"^v?\d+(\.\d+)?(\.\d+)?(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$")
