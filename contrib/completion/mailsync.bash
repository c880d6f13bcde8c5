# bash completion for mailsync(1): subcommands, their options, and account
# names read from the configuration file (the one named by --config/-c on
# the command line, else $XDG_CONFIG_HOME/mailsync/config.yaml).
# Installed as share/bash-completion/completions/mailsync; works with or
# without the bash-completion package.

# Prints the account names of a mailsync configuration: the keys one level
# under the top-level "accounts:" mapping. Read with awk, not mailsync, so
# that it is fast and still works while the file has mistakes.
_mailsync_accounts()
{
    local file=$1
    [ -r "$file" ] || return 0
    awk '
        /^[^ \t#]/ { inacc = ($0 ~ /^accounts:[ \t]*(#.*)?$/); ind = -1; next }
        !inacc || /^[ \t]*(#.*)?$/ { next }
        {
            match($0, /^ +/); n = RLENGTH
            if (ind < 0) ind = n
            if (n != ind) next
            line = substr($0, n + 1); q = substr(line, 1, 1)
            if (q == "\"" || q == "\047") {
                rest = substr(line, 2); e = index(rest, q)
                if (e > 1) print substr(rest, 1, e - 1)
            } else if (match(line, /^[A-Za-z0-9][A-Za-z0-9._-]*[ \t]*:/)) {
                name = substr(line, 1, RLENGTH - 1); sub(/[ \t]+$/, "", name); print name
            }
        }' "$file" 2>/dev/null
}

_mailsync()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=
    [ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD-1]}
    local config= cmd= i w
    local commands="init sync daemon ctl status check mailboxes version help"
    local global_opts="--config --verbose --quiet --help --version -c -v -q -h"

    # Find the --config value and the subcommand among the words so far.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [ -z "$cmd" ]; then
            case $w in
            -c | --config) config=${COMP_WORDS[i+1]}; i=$((i + 1)) ;;
            --config=*) config=${w#--config=} ;;
            -*) ;;
            *) cmd=$w ;;
            esac
        fi
    done
    if [ -z "$config" ]; then
        config=${XDG_CONFIG_HOME:-$HOME/.config}/mailsync/config.yaml
    fi
    config=${config/#\~/$HOME}

    case $prev in
    -c | --config | --maildir)
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
        ;;
    --tls)
        COMPREPLY=($(compgen -W "implicit starttls none" -- "$cur"))
        return 0
        ;;
    --provider)
        COMPREPLY=($(compgen -W "zoho zoho.eu zoho.in zoho.com.au zoho.jp zohocloud.ca zoho.sa zoho.com.cn gmail outlook microsoft365 fastmail icloud yahoo aol gmx gmx.com web.de mailbox.org posteo proton-bridge yandex qq 163 126" -- "$cur"))
        return 0
        ;;
    --user | --password-command | --host | --port)
        return 0
        ;;
    esac

    if [ -z "$cmd" ]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$global_opts" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        fi
        return 0
    fi

    local opts= accounts=1
    case $cmd in
    init)
        opts="--provider --user --password-command --maildir --pop3 --host --port --tls --no-check --help"
        accounts=0
        ;;
    sync) opts="--dry-run --force --help" ;;
    status) opts="--json --help" ;;
    ctl)
        COMPREPLY=($(compgen -W "status sync pause resume retry recheck reload" -- "$cur"))
        return 0
        ;;
    check) opts="--connect --json --help" ;;
    mailboxes) opts="--named --help" ;;
    help)
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        return 0
        ;;
    *) opts="--help"; accounts=0 ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [ $accounts -eq 1 ]; then
        COMPREPLY=($(compgen -W "$(_mailsync_accounts "$config")" -- "$cur"))
    fi
    return 0
}
complete -F _mailsync mailsync
