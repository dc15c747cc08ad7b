#!/bin/bash
# Writes zoo.cfg and myid from ZOO_MY_ID and ZOO_SERVERS
# ("server.1=zookeeper-1:2888:3888 server.2=..."), then runs the server in
# the foreground, logging to stdout.
set -euo pipefail
: "${ZOO_MY_ID:?ZOO_MY_ID must give the id of this server}"
data=/var/lib/zookeeper/data
mkdir -p "$data"
echo "$ZOO_MY_ID" > "$data/myid"
{
  echo "tickTime=2000"
  echo "initLimit=10"
  echo "syncLimit=5"
  echo "maxSessionTimeout=60000"
  echo "dataDir=$data"
  echo "clientPort=2181"
  echo "admin.enableServer=false"
  echo "4lw.commands.whitelist=srvr,mntr,ruok"
  # Bind the quorum ports on every address: a peer's own name resolves to
  # its container address only once the network is up.
  echo "quorumListenOnAllIPs=true"
  for server in ${ZOO_SERVERS:-server.1=localhost:2888:3888}; do
    echo "$server"
  done
} > /var/lib/zookeeper/zoo.cfg
exec java -Xmx512m -Dzookeeper.root.logger=INFO,CONSOLE -Dzookeeper.log.dir=/var/lib/zookeeper \
  -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar \
  org.apache.zookeeper.server.quorum.QuorumPeerMain /var/lib/zookeeper/zoo.cfg
