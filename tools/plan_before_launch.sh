# Sourced by the launchers: `plan_or_stop TOPOLOGY TRAIN_ARGS...` compiles the train step for
# the slice with `contrastive-jax plan` (on this machine, before anything is created) and
# exits the launcher with plan's status when the step does not fit (2) or plan fails.
# PLAN_ARGS: extra plan flags (a string, word-split), e.g. "--no-suggest".
plan_or_stop() {
  local topology="$1"; shift
  local plan_args=(plan --topology "$topology")
  while [ $# -gt 0 ]; do  # keep the config and its overrides; drop --workdir and the like
    case "$1" in
      --config) plan_args+=(--config "$2"); shift 2 ;;
      --config.*=*) plan_args+=("$1"); shift ;;
      --config.*) plan_args+=("$1" "$2"); shift 2 ;;
      --*=*) shift ;;
      --*) shift 2 ;;
      *) shift ;;
    esac
  done
  # shellcheck disable=SC2206
  plan_args+=(${PLAN_ARGS:-})
  echo "planning: contrastive-jax$(printf ' %q' "${plan_args[@]}")" >&2
  local status=0
  contrastive-jax "${plan_args[@]}" >&2 || status=$?
  if [ "$status" -ne 0 ]; then
    echo "stopped: the plan for $topology failed (exit $status); nothing was launched" \
         "(--skip-plan launches anyway)" >&2
    exit "$status"
  fi
}
