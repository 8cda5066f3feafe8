#!/usr/bin/env bash
# Renders a Kubernetes JobSet for multi-host training and applies it with kubectl.
# Each pod is one jax process; process 0's pod is the coordinator, reached through the
# JobSet's headless service. Process ids come from the Job completion index.
# With --topology (a TPU slice, e.g. v5p-64), `contrastive-jax plan` first compiles the step
# for it here and stops on "does not fit"; GPU targets are not planned (docs/plan.md).
#
#   tools/launch_k8s_jobset.sh --name RUN --image IMAGE [--hosts N] [--gpus-per-host G]
#                              [--topology T] [--skip-plan] [--plan-args "..."]
#                              [--dry-run] -- --config configs/X.py --workdir /mnt/run
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
name="" image="" hosts=2 gpus=8 port=8476 dry_run=0 topology="" skip_plan=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --hosts) hosts="$2"; shift 2 ;;
    --gpus-per-host) gpus="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --topology) topology="$2"; shift 2 ;;
    --skip-plan) skip_plan=1; shift ;;
    --plan-args) PLAN_ARGS="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "error: unknown option $1" >&2; usage ;;
  esac
done
[ -n "$name" ] && [ -n "$image" ] || { echo "error: --name and --image are required" >&2; exit 2; }
[ $# -gt 0 ] || { echo "error: give the train arguments after --" >&2; exit 2; }

if [ "$skip_plan" = 0 ] && [ -n "$topology" ]; then
  # shellcheck source=tools/plan_before_launch.sh
  source "$(dirname "$0")/plan_before_launch.sh"
  plan_or_stop "$topology" "$@"
fi

args=""
for a in "$@" "--config.distributed.enabled=on" \
         "--config.distributed.coordinator_address=${name}-workers-0-0.${name}:${port}" \
         "--config.distributed.num_processes=${hosts}"; do
  args+="              - \"${a//\"/\\\"}\""$'\n'
done

manifest=$(cat <<YAML
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: ${name}
spec:
  network:
    enableDNSHostnames: true
  failurePolicy:
    maxRestarts: 3
  replicatedJobs:
  - name: workers
    replicas: 1
    template:
      spec:
        parallelism: ${hosts}
        completions: ${hosts}
        completionMode: Indexed
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            terminationGracePeriodSeconds: 180
            containers:
            - name: train
              image: ${image}
              command: ["sh", "-c", "exec contrastive-jax train \"\$@\" --config.distributed.process_id=\$JOB_COMPLETION_INDEX", "--"]
              args:
${args}              ports:
              - containerPort: ${port}
              resources:
                limits:
                  nvidia.com/gpu: ${gpus}
YAML
)

if [ "$dry_run" = 1 ]; then
  printf '%s\n' "$manifest"
else
  printf '%s\n' "$manifest" | kubectl apply -f -
fi
