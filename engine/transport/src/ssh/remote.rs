//! What runs on the remote side: the shell scripts the transport sends, how
//! their arguments are quoted, and the environment file.
//!
//! Every remote command line has the form `exec /bin/sh ... 'arg' 'arg'`:
//! sshd hands it to the user's login shell, which must be a Bourne shell
//! (sh, dash, bash, zsh, ksh); `exec` makes that shell replace itself with
//! /bin/sh, so the process sshd started (the leader of the session sshd
//! created for the command) is our script, whatever the login shell is.
//! Arguments are single-quoted, the one quoting that every Bourne shell
//! takes literally.
//!
//! No secret ever appears on a command line: command lines show in `ps` on
//! the remote host. Environment values go through a file (see
//! [`env_file`]).

use std::fmt::Write as _;

/// The part of [`WRAPPER`] and [`BECOME_INNER`] that reports the process
/// group and enters the working directory: written once, because the
/// transport parses what it prints (`drover-pgid`, `drover-error`).
macro_rules! report_group_and_enter {
    () => {
        r#"read -r boot < /proc/sys/kernel/random/boot_id || boot=-
printf 'drover-pgid %s %s\n' "$$" "$boot" >&2
if [ -n "$2" ]; then
	if ! { mkdir -p -- "$2" && cd -- "$2"; }; then
		echo "drover-error cannot enter the working directory $2" >&2
		exit 127
	fi
fi
"#
    };
}

/// The end of [`WRAPPER`] and [`BECOME_INNER`]: the program must exist
/// (`drover-error cannot run ...`, which [`is_not_found`] recognises), then
/// `drover-exec` and the program itself.
macro_rules! start_program {
    () => {
        r#"shift 2
case $1 in
*/*) [ -f "$1" ] && [ -x "$1" ] ;;
*) command -v -- "$1" > /dev/null ;;
esac || {
	echo "drover-error cannot run $1: not found or not executable" >&2
	exit 127
}
echo drover-exec >&2
exec "$@""#
    };
}

/// The wrapper every command runs under, uploaded once per connection into
/// the connection's remote directory as `exec.sh`.
///
/// Arguments: the environment file (`''` for none), the working directory
/// (`''` for the login directory), the program, its arguments.
///
/// Standard error starts with protocol lines that the transport consumes
/// and does not log (see [`Header`]):
/// `drover-pgid PGID BOOT_ID`, then `drover-error MESSAGE` (setup failed,
/// exit 127) or `drover-exec` (the program starts now).
///
/// Why it is shaped this way:
/// - The program must lead a process group of its own so that a timeout can
///   signal everything it started and nothing else. OpenSSH's sshd already
///   runs each command in a new session; when the script finds that it is
///   not a group leader (another server, a login shell that forked), it
///   re-executes itself under `setsid`, which does not fork for a process
///   that is not a group leader, so the pid (and the group id we report)
///   stays the same.
/// - The environment file is opened and unlinked first thing, so secrets
///   are on disk only between the upload and the start of the script; it
///   is read back through /dev/fd after `cd`, right before `exec`, so that
///   variables it sets (PATH included) cannot change what the script itself
///   runs.
/// - `exec "$@"` replaces the script with the program: sshd then reports the
///   program's own exit status or signal.
pub(super) const WRAPPER: &str = concat!(
    r#"# drover's wrapper for one command; see engine/transport/src/ssh/remote.rs.
if ! read -r s < /proc/$$/stat; then
	echo "drover-error cannot read /proc/$$/stat: drover needs a Linux host" >&2
	exit 127
fi
s=${s##*) }
s=${s#* * }
if [ "${s%% *}" != "$$" ]; then
	exec setsid /bin/sh "$0" "$@"
fi
if [ -n "$1" ]; then
	exec 3< "$1"
	rm -f -- "$1"
fi
"#,
    report_group_and_enter!(),
    r#"if [ -n "$1" ]; then
	set -a
	. /dev/fd/3
	set +a
	exec 3<&-
fi
"#,
    start_program!(),
    "\n"
);

/// Makes (or, after a reconnect, takes back) the connection's remote
/// directory and writes the wrapper into it from standard input; prints the
/// directory.
///
/// Arguments: the directory of the previous connection to the same target,
/// or `''`; the become user, or `''`. It is taken back only if it is still a
/// directory of ours, which keeps one directory per transport across
/// reconnects (so that `cleanup` removes everything); otherwise a fresh one
/// is made with `mktemp`, whose unpredictable name is what makes a
/// directory in a shared /tmp safe.
///
/// With a become user, first checks that `sudo -n` lets the login user run
/// commands as that user: if not, exits with [`SUDO_REFUSED`] and sudo's
/// message on standard error, before anything is made.
pub(super) const SETUP: &str = r#"if [ -n "$2" ]; then
	if ! command -v sudo > /dev/null 2>&1; then
		echo "sudo is not installed" >&2
		exit 3
	fi
	sudo -n -u "$2" -- /bin/sh -c 'exit 0' < /dev/null || exit 3
fi
umask 077
if [ -n "$1" ] && [ -d "$1" ] && [ ! -h "$1" ] && [ -O "$1" ]; then
	d=$1
else
	d=$(mktemp -d /tmp/drover-ssh.XXXXXXXXXX) || exit 1
fi
cat > "$d/exec.sh" || exit 1
printf '%s\n' "$d""#;

/// Ends a process group: SIGTERM, up to `$3` tenths of a second for its
/// live members to go, then SIGKILL.
///
/// Arguments: the group id, the boot id the group was started under, the
/// grace period in tenths of a second. Nothing is sent when the host has
/// rebooted since (the number may now belong to anything) or when the
/// group is already empty. Zombies do not count as live: an orphan that
/// init reaps late would otherwise cost the whole grace period.
pub(super) const KILL_GROUP: &str = r#"read -r b < /proc/sys/kernel/random/boot_id || b=-
[ "$b" = "$2" ] || exit 0
kill -s TERM -- "-$1" 2> /dev/null || exit 0
alive() {
	for f in /proc/[0-9]*/stat; do
		read -r s 2> /dev/null < "$f" || continue
		s=${s##*) }
		st=${s%% *}
		s=${s#* * }
		[ "${s%% *}" = "$1" ] && [ "$st" != Z ] && [ "$st" != X ] && return 0
	done
	return 1
}
i=0
while [ "$i" -lt "$3" ] && alive "$1"; do
	sleep 0.1
	i=$((i + 1))
done
kill -s KILL -- "-$1" 2> /dev/null
exit 0"#;

/// Makes a run's directory `$TMPDIR/drover-$1` (`/tmp` when TMPDIR is
/// unset or not absolute), mode 700, and prints it.
///
/// TMPDIR counts because hosts that share one /tmp give each session a
/// temporary directory of its own (the local provider's hosts do): two
/// hosts of one run must never share the run's directory, or one host's
/// staging and cleanup would change the files a script on the other is
/// running from.
///
/// The name is predictable (the run id), so an existing directory is only
/// accepted if it is ours and not a symbolic link: on a shared host another
/// user could have made it first.
pub(super) const RUN_DIR: &str = r#"t=${TMPDIR:-/tmp}
case $t in
/*) ;;
*) t=/tmp ;;
esac
d=${t%/}/drover-$1
if mkdir -m 700 -- "$d" 2> /dev/null; then
	:
elif [ -d "$d" ] && [ ! -h "$d" ] && [ -O "$d" ]; then
	chmod 700 -- "$d" || exit 1
else
	echo "$d exists and does not belong to $(id -un)" >&2
	exit 1
fi
printf '%s\n' "$d""#;

/// Removes every argument recursively.
pub(super) const REMOVE: &str = r#"rm -rf -- "$@""#;

/// The exit status of [`SETUP`] when sudo refuses the become user.
pub(super) const SUDO_REFUSED: u32 = 3;

/// With `ssh.become`: the part of a command that runs as the login user.
///
/// Arguments: the environment file (`''` for none), the become user,
/// [`BECOME_INNER`], then the working directory, the program and its
/// arguments.
///
/// It opens the environment file as standard input and unlinks it, then
/// `exec`s sudo, which runs [`BECOME_INNER`] as the become user with the
/// file as its standard input: the environment never shows on a command
/// line, and never has to be readable by the become user (sudo resets the
/// environment and closes every other descriptor, so stdin is the one way
/// in). When sudo refuses, it says so on standard error before any
/// protocol line, and the transport reports it as a refused become.
pub(super) const BECOME_OUTER: &str = r#"if [ -n "$1" ]; then
	exec 0< "$1"
	rm -f -- "$1"
else
	exec 0< /dev/null
fi
u=$2
shift 2
exec sudo -n -u "$u" -- /bin/sh -c "$1" drover-exec "$@""#;

/// With `ssh.become`: [`WRAPPER`] as the become user. Its first argument
/// is its own text (to re-execute itself under `setsid`), then the working
/// directory, the program and its arguments; the environment comes on
/// standard input.
///
/// sudo runs it in sudo's own process group (or, with a pseudo-terminal,
/// in one of its own); like the wrapper it makes sure it leads a group and
/// reports that, so that a timeout ends the program and what it started,
/// through sudo as the same user.
pub(super) const BECOME_INNER: &str = concat!(
    r#"if ! read -r s < /proc/$$/stat; then
	echo "drover-error cannot read /proc/$$/stat: drover needs a Linux host" >&2
	exit 127
fi
s=${s##*) }
s=${s#* * }
if [ "${s%% *}" != "$$" ]; then
	exec setsid /bin/sh -c "$1" drover-exec "$@"
fi
drover_env=$(cat) || drover_env=
exec 0< /dev/null
"#,
    report_group_and_enter!(),
    r#"set -a
eval "$drover_env"
set +a
"#,
    start_program!()
);

/// With `ssh.become`: extracts a tar stream from standard input into the
/// directory `$1` (made if missing), as the become user, keeping the
/// modes recorded in the archive; files belong to the become user.
pub(super) const UNTAR: &str = r#"umask 077
mkdir -p -- "$1" || exit 1
exec tar -x -p --no-same-owner -f - -C "$1""#;

/// The command line that runs `script` with `args` under /bin/sh as
/// `user`, through `sudo -n` (never asks for a password).
pub(super) fn sudo_line(user: &str, script: &str, name: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut line = b"exec sudo -n -u ".to_vec();
    quote_into(&mut line, user.as_bytes());
    line.extend_from_slice(b" -- /bin/sh -c ");
    quote_into(&mut line, script.as_bytes());
    line.push(b' ');
    quote_into(&mut line, name.as_bytes());
    for arg in args {
        line.push(b' ');
        quote_into(&mut line, arg);
    }
    line
}

/// The command line that runs a command as `user` (see [`BECOME_OUTER`]);
/// `args` are the working directory, the program and its arguments.
pub(super) fn become_line(env_file: &str, user: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut all: Vec<&[u8]> = vec![env_file.as_bytes(), user.as_bytes(), BECOME_INNER.as_bytes()];
    all.extend_from_slice(args);
    sh_line(BECOME_OUTER, "drover-become", &all)
}

/// Whether the first stderr lines of a command under become say that sudo
/// refused (it prefixes its own messages with `sudo:`).
pub(super) fn is_sudo_refusal(early: &[String]) -> bool {
    early
        .iter()
        .any(|line| line.starts_with("sudo:") || line.contains("sudo: not found"))
}

/// The command line that runs `script` with `args` under /bin/sh.
///
/// `name` becomes `$0` and shows in `ps`, which is what it is for.
pub(super) fn sh_line(script: &str, name: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut line = b"exec /bin/sh -c ".to_vec();
    quote_into(&mut line, script.as_bytes());
    line.push(b' ');
    quote_into(&mut line, name.as_bytes());
    for arg in args {
        line.push(b' ');
        quote_into(&mut line, arg);
    }
    line
}

/// The command line that runs the uploaded wrapper in `dir`.
pub(super) fn wrapper_line(dir: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut line = b"exec /bin/sh ".to_vec();
    quote_into(&mut line, format!("{dir}/exec.sh").as_bytes());
    for arg in args {
        line.push(b' ');
        quote_into(&mut line, arg);
    }
    line
}

/// Appends `word` single-quoted: inside single quotes a Bourne shell takes
/// every byte literally except `'` itself, which is written as `'\''`
/// (close, escaped quote, reopen).
pub(super) fn quote_into(out: &mut Vec<u8>, word: &[u8]) {
    out.push(b'\'');
    for &b in word {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

/// Whether `word` can be passed as an argument at all: an exec argument
/// ends at the first NUL byte.
pub(super) fn passable(word: &[u8]) -> bool {
    !word.contains(&0)
}

/// A variable the environment file cannot carry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadVariable {
    /// Not a shell variable name (`[A-Za-z_][A-Za-z0-9_]*`).
    Name(String),
    /// The value holds a NUL byte, which no environment can.
    Value(String),
}

/// The environment file: one `NAME='value'` line per variable, read by the
/// wrapper with `set -a` so that each is exported.
///
/// Names are checked rather than quoted: a name is code to the shell that
/// reads the file. Values are single-quoted and so taken literally,
/// newlines included.
pub(super) fn env_file(env: &[(String, String)]) -> Result<String, BadVariable> {
    let mut file = String::new();
    for (name, value) in env {
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
        if !valid {
            return Err(BadVariable::Name(name.clone()));
        }
        if value.contains('\0') {
            return Err(BadVariable::Value(name.clone()));
        }
        // Writing to a String cannot fail.
        let _ = writeln!(file, "{name}='{}'", value.replace('\'', r"'\''"));
    }
    Ok(file)
}

/// The protocol lines the wrapper writes at the start of standard error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Header {
    /// The program's process group and the boot it belongs to.
    Group(Group),
    /// Setup failed; the wrapper exits with 127.
    Error(String),
    /// The program starts now; everything after this is its output.
    Exec,
}

/// A remote process group, as reported by the wrapper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// The group id: the wrapper's (and then the program's) pid.
    pub(crate) pgid: u32,
    /// The remote boot id: a group id means nothing after a reboot.
    pub(crate) boot: String,
}

impl Group {
    /// The arguments of [`KILL_GROUP`].
    pub(super) fn kill_args(&self, grace_tenths: u32) -> [String; 3] {
        [self.pgid.to_string(), self.boot.clone(), grace_tenths.to_string()]
    }
}

/// Parses one line of standard error that may be a protocol line.
///
/// A group id of 0 or 1 is refused: `kill -- -1` signals every process the
/// user may signal, and 0 the sender's own group.
pub(super) fn parse_header(line: &str) -> Option<Header> {
    if line == "drover-exec" {
        return Some(Header::Exec);
    }
    if let Some(message) = line.strip_prefix("drover-error ") {
        return Some(Header::Error(message.to_string()));
    }
    let rest = line.strip_prefix("drover-pgid ")?;
    let (pgid, boot) = rest.split_once(' ')?;
    let pgid: u32 = pgid.parse().ok().filter(|&p| p > 1)?;
    let boot_ok = !boot.is_empty() && boot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    boot_ok.then(|| {
        Header::Group(Group {
            pgid,
            boot: boot.to_string(),
        })
    })
}

/// Whether a wrapper's `drover-error` message says the program does not
/// exist or cannot be executed (a permanent failure: another attempt finds
/// the same file).
pub(super) fn is_not_found(message: &str) -> bool {
    message.starts_with("cannot run ") && message.ends_with(": not found or not executable")
}

/// Whether `id` can name a run directory `$TMPDIR/drover-<id>`: no path
/// separators, nothing the shell or a reader of `ps` could misread.
pub(super) fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(word: &str) -> String {
        let mut out = Vec::new();
        quote_into(&mut out, word.as_bytes());
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn quoting_survives_every_shell_metacharacter() {
        assert_eq!(quoted("plain"), "'plain'");
        assert_eq!(quoted("it's"), r"'it'\''s'");
        assert_eq!(quoted(""), "''");
        // Run the quoted words through a real shell: what comes out is what
        // went in.
        let words = [
            "a b",
            "$HOME",
            "`id`",
            "it's",
            "\"q\"",
            "new\nline",
            "*",
            "\\",
            "-n",
            "",
        ];
        let mut script = String::from("printf '%s\\0'");
        for w in words {
            script.push(' ');
            script.push_str(&quoted(w));
        }
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .expect("sh runs");
        let got: Vec<String> = out
            .stdout
            .split(|&b| b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        assert_eq!(got[..words.len()], words.map(String::from));
    }

    #[test]
    fn env_file_refuses_names_that_are_code() {
        assert_eq!(
            env_file(&[("A_1".into(), "x'y\nz".into())]),
            Ok("A_1='x'\\''y\nz'\n".into())
        );
        assert_eq!(
            env_file(&[("A;rm".into(), "x".into())]),
            Err(BadVariable::Name("A;rm".into()))
        );
        assert_eq!(
            env_file(&[("1A".into(), "x".into())]),
            Err(BadVariable::Name("1A".into()))
        );
        assert_eq!(env_file(&[("".into(), "x".into())]), Err(BadVariable::Name("".into())));
        assert_eq!(
            env_file(&[("A".into(), "x\0".into())]),
            Err(BadVariable::Value("A".into()))
        );
    }

    #[test]
    fn headers_never_name_group_zero_or_one() {
        assert_eq!(
            parse_header("drover-pgid 4242 0c5e-ab"),
            Some(Header::Group(Group {
                pgid: 4242,
                boot: "0c5e-ab".into()
            }))
        );
        assert_eq!(parse_header("drover-pgid 1 abc"), None);
        assert_eq!(parse_header("drover-pgid 0 abc"), None);
        assert_eq!(parse_header("drover-pgid -5 abc"), None);
        assert_eq!(parse_header("drover-pgid 12 a;b"), None);
        assert_eq!(parse_header("drover-exec"), Some(Header::Exec));
        assert_eq!(parse_header("drover-error x y"), Some(Header::Error("x y".into())));
        assert_eq!(parse_header("hello"), None);
    }

    #[test]
    fn run_ids_are_single_path_components() {
        assert!(valid_run_id("20240101-abc_1.2"));
        for bad in ["", ".", "..", "a/b", "a b", "a'b", "$x"] {
            assert!(!valid_run_id(bad), "{bad:?}");
        }
    }
}
