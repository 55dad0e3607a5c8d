#!/usr/bin/env bash
# Multi-node launch without torchrun: run this same command on every node (one process per node, each
# driving its local GPUs). JAX's multi-controller runtime connects the processes through the coordinator.
#
#   COORDINATOR=node0:1234 NUM_NODES=2 NODE_RANK=0 docker/launch.sh --config=configs/rho1.py ...   # on node 0
#   COORDINATOR=node0:1234 NUM_NODES=2 NODE_RANK=1 docker/launch.sh --config=configs/rho1.py ...   # on node 1
#
# Under SLURM (srun, one task per node) or an MPI launcher, leave these unset and pass
# --config.distributed.cluster=auto: JAX reads the scheduler's environment itself. In a Kubernetes Indexed Job
# (docker/k8s-job.yaml) the variables come from the pod spec.
set -euo pipefail
: "${COORDINATOR:?set COORDINATOR=host:port of node 0}"
: "${NUM_NODES:?set NUM_NODES}"
: "${NODE_RANK:?set NODE_RANK (0 .. NUM_NODES-1)}"
export JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_NODES" JAX_PROCESS_ID="$NODE_RANK"
exec python -m wmtp_jax.main "$@"
