#!/bin/sh
# A man page from a program's --help, for systems without help2man:
#   man.sh PROGRAM SECTION VERSION "ONE-LINE DESCRIPTION" OUTFILE
# The --help text goes in verbatim (roff-escaped), after NAME and a SYNOPSIS from its first line.
set -eu
prog=$1 section=$2 version=$3 desc=$4 out=$5
name=$(basename "$prog")
help=$("$prog" --help 2>&1) || true
[ -n "$help" ] || { echo "man.sh: $prog --help printed nothing" >&2; exit 1; }
esc() { sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"; }
{
  printf '.TH %s %s "" "%s %s" "Lagoon"\n' "$(echo "$name" | tr '[:lower:]' '[:upper:]')" "$section" "$name" "$version"
  printf '.SH NAME\n%s \\- %s\n' "$name" "$desc"
  printf '.SH SYNOPSIS\n.nf\n'
  printf '%s\n' "$help" | head -n 1 | esc
  printf '.fi\n.SH DESCRIPTION\n.nf\n'
  printf '%s\n' "$help" | tail -n +2 | esc
  printf '.fi\n'
} >"$out"
