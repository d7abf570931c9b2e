# bash completion for moat (from 'moat completions bash').
# Each TAB runs 'moat __complete CWORD WORD...': the first line of its answer says what to
# complete (words, files or dirs), the rest are the candidates.
_moat() {
    local line=${COMP_LINE:0:COMP_POINT} cur out kind pre
    local -a words
    read -r -a words <<<"$line"
    if [[ ${#words[@]} -eq 0 || $line == *[[:space:]] ]]; then
        words+=("")
    fi
    cur=${words[${#words[@]}-1]}
    out=$(command moat __complete "$((${#words[@]} - 1))" "${words[@]}" 2>/dev/null) || return 0
    kind=${out%%$'\n'*}
    COMPREPLY=()
    case $kind in
    files)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        ;;
    dirs)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
        ;;
    words)
        [[ $out == *$'\n'* ]] || return 0
        mapfile -t COMPREPLY <<<"${out#*$'\n'}"
        [[ ${COMPREPLY[*]} ]] || COMPREPLY=()
        # bash splits the word being completed at ':' and '=' (COMP_WORDBREAKS) and
        # replaces only the last piece: drop what comes before it from each candidate.
        pre=${cur%"${cur##*[:=]}"}
        if [[ -n $pre ]]; then
            COMPREPLY=("${COMPREPLY[@]#"$pre"}")
        fi
        ;;
    esac
    return 0
}
complete -F _moat moat
