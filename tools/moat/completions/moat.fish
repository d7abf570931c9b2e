# fish completion for moat (from 'moat completions fish'). Each TAB runs
# 'moat __complete CWORD WORD...': the first line of its answer says what to complete
# (words, files or dirs), the rest are the candidates.
function __moat_complete
    set -l tokens (commandline -opc)
    set -l cur (commandline -ct)
    set -l out (command moat __complete (count $tokens) $tokens "$cur" 2>/dev/null)
    or return
    set -l kind $out[1]
    set -e out[1]
    switch "$kind"
        case files
            __fish_complete_path "$cur"
        case dirs
            __fish_complete_directories "$cur"
        case '*'
            printf '%s\n' $out
    end
end
complete -c moat -f -a '(__moat_complete)'
