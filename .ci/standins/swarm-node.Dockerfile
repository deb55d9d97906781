# A Docker engine in a container, for the multi-node Swarm test (tests/swarm/run.sh):
# Debian's docker.io running dockerd, one such container per Swarm node. Not a
# stand-in for an official image (docker:dind needs --privileged, refused here).
FROM taskbeam-standin/debian:bookworm
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker.io iptables ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
VOLUME /var/lib/docker
CMD ["dockerd"]
