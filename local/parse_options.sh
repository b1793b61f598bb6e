# Option parsing shared by prepare.sh and the egs/*/run.sh scripts (sourced, not run).
#
# The caller assigns its defaults as `name=value  # help` lines, lists the names in
# `options`, then sources this file with its arguments:
#     . "$here/local/parse_options.sh" "$@"
# Each `--some-name value` sets `some_name`; `--help` prints the script's header
# comment and its options with their defaults. Unknown options are an error.

_usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  echo
  echo "Options (--name value):"
  local name
  for name in $options; do
    printf '  --%-24s %s\n' "$(echo "$name" | tr _ -)" \
      "$(grep -m1 -E "^${name}=" "$0" | sed 's/^[^=]*=//;s/ *#/  #/')"
  done
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) _usage; exit 0 ;;
    --*)
      _name=$(echo "${1#--}" | tr '-' '_')
      if ! echo " $options " | tr '\n' ' ' | grep -q " $_name "; then
        echo "$0: unknown option $1 (see --help)" >&2; exit 1
      fi
      [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
      printf -v "$_name" '%s' "$2"
      shift 2 ;;
    *) echo "$0: unexpected argument $1 (see --help)" >&2; exit 1 ;;
  esac
done
unset _name
