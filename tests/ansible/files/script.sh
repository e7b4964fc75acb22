#!/bin/sh
# Run on every target by the "script" task: prints its arguments and who ran it.
echo "script args: $*"
echo "script user: $(id -un)"
