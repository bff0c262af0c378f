#!/bin/sh
# Entry point of the shardcast image. Inside a container every client, the host included,
# reaches the broker through Docker's NAT, so nothing is a loopback peer and the HTTP API
# (publish, broadcast) would refuse everyone. SHARDCAST_API_KEY turns the API key on:
#   docker run -p 8080:8080 -e SHARDCAST_API_KEY=change-me shardcast
#   curl -H 'Authorization: Bearer change-me' -H 'Content-Type: application/json' \
#        -d '{"channel":"news","data":{"hello":"world"}}' http://localhost:8080/api/publish
set -eu
if [ -n "${SHARDCAST_API_KEY:-}" ]; then
    # Unless the operator chose another variable already.
    export SHARDCAST_API__KEY_ENV="${SHARDCAST_API__KEY_ENV:-SHARDCAST_API_KEY}"
elif [ -z "${SHARDCAST_API__KEY_ENV:-}" ]; then
    echo "shardcast image: no SHARDCAST_API_KEY, so the HTTP API answers only requests from inside this container (403 from the host); run with -e SHARDCAST_API_KEY=<key> to publish from outside" >&2
fi
exec shardcast "$@"
