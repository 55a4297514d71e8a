#!/bin/sh
# The unprivileged user the server runs as (uid and gid 1000, as the Helm chart's runAsUser),
# and the folders it owns: /cache (MODELMORA_HOME, a volume) and /project (the working folder).
set -eu
groupadd --gid 1000 modelmora
useradd --uid 1000 --gid 1000 --home-dir /project --no-create-home --shell /usr/sbin/nologin modelmora
mkdir -p /cache /project
chown modelmora:modelmora /cache /project
