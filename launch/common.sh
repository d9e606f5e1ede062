# What every launcher shares; sourced, not run. A launcher sets
#   LAUNCHER   its name in error messages,
#   OPTIONS    the names of its --NAME=VALUE options (each sets the variable NAME in upper case:
#              --chips_per_host=4 sets CHIPS_PER_HOST),
#   FLAGS      the names of its value-less options (--spot sets SPOT=1),
# and the defaults of those variables, then calls `parse_options "$@"` and
# `set -- "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}"`: what follows `--` is left for the module.
# --dry-run (or --dry_run) sets DRY_RUN=1 and -h/--help prints the script's header comment.

DRY_RUN=0
PASSTHROUGH=()

die() { echo "$LAUNCHER: error: $*" >&2; exit 2; }

# The header comment of the running script (after the #! line, #SBATCH lines left out).
usage() {
  awk 'NR == 1 { next } !/^#/ { exit } /^#SBATCH/ { next } { sub(/^# ?/, ""); print }' "$0"
}

parse_options() {
  local arg name options=" ${OPTIONS//$'\n'/ } " flags=" ${FLAGS:-} "
  while [[ $# -gt 0 ]]; do
    arg="$1"; shift
    name="${arg#--}"; name="${name%%=*}"
    [[ "$name" =~ ^[a-z_]+$ ]] || name="-"  # Only a listed name becomes a variable.
    case "$arg" in
      --) break ;;
      -h|--help) usage; exit 0 ;;
      --dry-run|--dry_run) DRY_RUN=1 ;;
      --*=*) [[ "$options" == *" $name "* ]] || unknown_option "$arg"
             printf -v "${name^^}" '%s' "${arg#*=}" ;;
      --*) [[ "$flags" == *" $name "* ]] || unknown_option "$arg"
           printf -v "${name^^}" '%s' 1 ;;
      *) unknown_option "$arg" ;;
    esac
  done
  PASSTHROUGH=("$@")
}

unknown_option() {
  die "unknown option $1 (see --help; options go before --, the flags for the Python module after it)."
}

# One shell word, quoted only when it needs to be (what --dry-run prints can be pasted).
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

# The words, each quoted as q does, joined by spaces: a command line to print or to run remotely.
quote_words() {
  local line="" a
  for a in "$@"; do line+="${line:+ }$(q "$a")"; done
  printf '%s' "$line"
}

# Prints the command (quoted) after "+ ", then runs it unless --dry-run.
run() {
  echo "+ $(quote_words "$@")"
  [[ "$DRY_RUN" == 1 ]] || "$@"
}

# "gs://bucket/any/path" or "bucket": the bucket's name.
bucket_name() {
  local b="${1#gs://}"
  printf '%s' "${b%%/*}"
}
