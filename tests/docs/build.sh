#!/usr/bin/env bash
# Builds the docs site strictly (any warning fails: a broken link, a missing page, an
# included file that is gone) into a temporary directory, and checks that no built page
# loads anything from the internet. The argument is the virtual environment to use.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${1:-${LLAMA_GATEWAY_VENV:-.venv}}
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
NO_MKDOCS_2_WARNING=1 "$venv/bin/mkdocs" build --strict --quiet --site-dir "$site"
# Scripts, styles, fonts and images come with the site; a link to elsewhere is only a link.
if (cd "$site" && grep -rlE '<(script|link|img|iframe)[^>]*(src|href)="(https?:)?//' --include='*.html' .); then
  echo "docs: the pages above load something from the internet; ship it with the site" >&2
  exit 1
fi
echo "docs: built $(find "$site" -name index.html | wc -l) pages"
