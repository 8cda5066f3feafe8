#!/usr/bin/env bash
# Runs `contrastive-jax train` on every worker of a Cloud TPU VM pod slice.
# jax.distributed detects the pod by itself (config distributed.enabled=auto), so each worker
# runs the same command; process 0 writes metrics, all write their checkpoint shards.
# First, here, `contrastive-jax plan` compiles the step for the slice's accelerator type
# (--type, else gcloud's description of the TPU) and stops on "does not fit".
#
#   tools/launch_tpu_pod.sh --tpu NAME --zone ZONE [--type v5p-64] [--project P]
#                           [--repo-dir DIR] [--setup] [--skip-plan] [--plan-args "..."]
#                           [--dry-run] -- --config configs/X.py --workdir gs://bucket/run
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
tpu="" zone="" project="" repo_dir="contrastive_jax" setup=0 dry_run=0 type="" skip_plan=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --repo-dir) repo_dir="$2"; shift 2 ;;
    --setup) setup=1; shift ;;
    --type) type="$2"; shift 2 ;;
    --skip-plan) skip_plan=1; shift ;;
    --plan-args) PLAN_ARGS="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "error: unknown option $1" >&2; usage ;;
  esac
done
[ -n "$tpu" ] && [ -n "$zone" ] || { echo "error: --tpu and --zone are required" >&2; exit 2; }
[ $# -gt 0 ] || { echo "error: give the train arguments after --" >&2; exit 2; }

train_args=$(printf ' %q' "$@")
remote="cd $(printf %q "$repo_dir")"
if [ "$setup" = 1 ]; then
  # TPU VMs need libtpu, pinned in lockstep with jax by the package's `tpu` extra.
  remote+=" && pip install -q -e '.[tpu]'"
fi
remote+=" && contrastive-jax train${train_args}"

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
[ -n "$project" ] && cmd+=(--project "$project")

if [ "$skip_plan" = 0 ]; then
  if [ -z "$type" ] && [ "$dry_run" = 0 ]; then
    describe=(gcloud compute tpus tpu-vm describe "$tpu" --zone "$zone"
              --format='value(acceleratorType)')
    [ -n "$project" ] && describe+=(--project "$project")
    type=$("${describe[@]}")
  fi
  if [ -n "$type" ]; then
    # shellcheck source=tools/plan_before_launch.sh
    source "$(dirname "$0")/plan_before_launch.sh"
    plan_or_stop "$type" "$@"
  else
    echo "dry run: would plan for the TPU's accelerator type (give --type to plan now)" >&2
  fi
fi

if [ "$dry_run" = 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
