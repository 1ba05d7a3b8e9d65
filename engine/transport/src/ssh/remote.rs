//! What runs on the remote side: the shell programs the transport sends,
//! how their words are quoted, and how a command's environment, script and
//! files reach it.
//!
//! A command runs on a channel of its own, as `exec /bin/sh -s drover-task`
//! (through `sudo -n -u USER` under `ssh.become`): sshd hands that line to
//! the user's login shell, which must be a Bourne shell (sh, dash, bash,
//! zsh, ksh), and it replaces itself with /bin/sh, which reads the
//! command's whole program from the channel's standard input
//! ([`task_program`]). So one channel, one round trip, carries everything
//! a command needs: its environment (secrets included), its script, the
//! files it reads (rendered templates); none of it is uploaded first, and
//! none of it shows in `ps` (stdin is not on a command line).
//!
//! Helpers (removing directories, extracting an archive, ending a process
//! group) are one line each: `exec /bin/sh -c 'script' name 'arg'...`
//! ([`sh_line`], [`sudo_line`]). Words are single-quoted, the one quoting
//! that every Bourne shell takes literally.

use std::fmt::Write as _;

/// What a command runs.
pub(super) enum Run<'a> {
    /// A program and its arguments.
    Program(&'a [u8], Vec<&'a [u8]>),
    /// A shell script's text, run by the command's own /bin/sh.
    Script(&'a str),
}

/// Everything a command is made of.
pub(super) struct Task<'a> {
    /// The run's directory, made (mode 700) if missing, refused if it is
    /// not a directory of the user's own: its name is predictable, and on
    /// a shared host another user could have made it first.
    pub(super) run_dir: Option<&'a str>,
    /// The working directory (made if missing); empty: the login directory.
    pub(super) cwd: &'a [u8],
    /// The environment, already checked ([`check_env`]).
    pub(super) env: &'a [(String, String)],
    /// Files written (directory 700, files 600) before the command starts
    /// and removed, with their directory, when it has ended.
    pub(super) files: Option<(&'a str, &'a [(String, String)])>,
    /// What to run.
    pub(super) run: Run<'a>,
    /// Remove the run directory when the command has ended (the run's
    /// last command on the server).
    pub(super) remove_run_dir: bool,
    /// Tenths of a second that what the command left in its group gets
    /// between SIGTERM and SIGKILL.
    pub(super) grace_tenths: u32,
}

/// The waiting side of a command, run by the login shell (see
/// [`task_line`]). `$w_f`: the files' directory, `$w_d`: the run directory
/// to remove, `$w_g`: the grace period in tenths (set before it).
const WAIT: &str = r#"exec 5>&1 6>&2 2> /dev/null
p=$(exec 4>&1 1>&5 2>&6 5>&- 6>&-
for s in /usr/bin/setsid /bin/setsid /usr/local/bin/setsid /usr/sbin/setsid /sbin/setsid; do
	[ -x "$s" ] && exec "$s" /bin/sh -s drover-task
done
echo "drover-error setsid (util-linux) is not installed on this host" >&2
exit 127)
rc=$?
exec 2>&6 5>&- 6>&-
if [ -n "$p" ] && kill -s 0 -- "-$p" 2> /dev/null; then
	kill -s TERM -- "-$p" 2> /dev/null
	i=0
	while [ "$i" -lt "$w_g" ] && kill -s 0 -- "-$p" 2> /dev/null; do
		sleep 0.1
		i=$((i + 1))
	done
	kill -s KILL -- "-$p" 2> /dev/null
fi
[ -z "$w_f" ] || rm -rf -- "$w_f"
[ -z "$w_d" ] || { cd / && rm -rf -- "$w_d"; }
case $rc in
129 | 13[0-9] | 14[0-3]) kill "-$((rc - 128))" "$$" ;;
esac
exit "$rc""#;

/// The command line of a command's channel. sshd runs it with the user's
/// login shell, which must be a Bourne shell (sh, dash, bash, zsh, ksh),
/// as the login user or, under `ssh.become`, as the become user through
/// `sudo -n -u USER -- /bin/sh -c` (sudo passes standard input on).
///
/// That shell is the command's waiting side ([`WAIT`]): it starts
/// `setsid /bin/sh -s`, which reads the command's program from the
/// channel ([`task_program`]) in a session and process group of its own,
/// learns its pid (descriptor 4, the write end of the command
/// substitution's pipe, closed by the command as soon as it has written
/// it, so that the substitution waits for the command's exit and no
/// longer), waits, ends what the command left in its group (SIGTERM, the
/// grace period, SIGKILL; `kill -s 0` says whether anything is left, so
/// the usual case costs nothing), removes the command's files (and, for
/// the run's last command on the server, the run directory), and ends the
/// way the command ended: its exit status, or the signal that killed it,
/// re-raised so that sshd reports it (a command that exits with 128+N, N
/// up to 15, reads as killed by signal N, as in any shell). While it
/// waits, its own standard error points at /dev/null (the command's is the
/// channel's): a shell reports a child killed by a signal there, which is
/// not the command's output.
///
/// Why the command runs as a child of the login shell, under `setsid`,
/// instead of replacing it: its group then holds it and what it started,
/// and nothing else, so that a timeout signals exactly that (through
/// another channel, see [`KILL_GROUP`]), and ending leftovers after a
/// normal exit needs no second channel. Three programs start per command
/// (the login shell, setsid, /bin/sh) and an inline script runs in the
/// last of them: on a small VM, an exec costs about a millisecond, as much
/// as anything else a command does.
///
/// The line holds no secret (paths and numbers only): it shows in `ps`.
pub(super) fn task_line(task: &Task<'_>, become_user: Option<&str>) -> Vec<u8> {
    let mut waiting = b"w_f=".to_vec();
    quote_into(&mut waiting, task.files.map_or("", |(dir, _)| dir).as_bytes());
    waiting.extend_from_slice(b" w_d=");
    let remove = if task.remove_run_dir {
        task.run_dir.unwrap_or("")
    } else {
        ""
    };
    quote_into(&mut waiting, remove.as_bytes());
    let _ = write!(Bytes(&mut waiting), " w_g={}\n{WAIT}", task.grace_tenths);
    match become_user {
        None => waiting,
        Some(user) => {
            let mut line = b"exec sudo -n -u ".to_vec();
            quote_into(&mut line, user.as_bytes());
            line.extend_from_slice(b" -- /bin/sh -c ");
            quote_into(&mut line, &waiting);
            line.extend_from_slice(b" drover-task");
            line
        }
    }
}

/// The program the command's /bin/sh reads from standard input.
///
/// It is one `{ ... }` group, so the shell has read all of it before it
/// runs any of it: nothing the command does with standard input can reach
/// it. It reports the group (`drover-pgid PGID BOOT_ID` on stderr, and the
/// pid on descriptor 4 for [`WAIT`]), makes the run directory and the
/// working directory and enters it, writes the files (a failure is
/// `drover-error MESSAGE`, exit 127), points standard input at /dev/null,
/// exports the environment, says `drover-exec` (from here on, stderr is
/// the command's) and then runs the script in place, or replaces itself
/// with the program (which must exist: `drover-error cannot run ...`,
/// which [`is_not_found`] recognises).
///
/// Nothing in it shows in `ps`; the environment (secrets included), the
/// script and the files travel only here.
pub(super) fn task_program(task: &Task<'_>) -> Vec<u8> {
    let mut p: Vec<u8> = br#"{
read -r _drover_b < /proc/sys/kernel/random/boot_id || _drover_b=-
printf 'drover-pgid %s %s\n' "$$" "$_drover_b" >&2
echo "$$" >&4
exec 4>&-
"#
    .to_vec();
    if let Some(dir) = task.run_dir {
        p.extend_from_slice(b"_drover_d=");
        quote_into(&mut p, dir.as_bytes());
        p.extend_from_slice(
            br#"
if ! { [ -d "$_drover_d" ] && [ ! -h "$_drover_d" ] && [ -O "$_drover_d" ]; }; then
	mkdir -m 700 -- "$_drover_d" 2> /dev/null
	if ! { [ -d "$_drover_d" ] && [ ! -h "$_drover_d" ] && [ -O "$_drover_d" ]; }; then
		echo "drover-error the run directory $_drover_d cannot be made, or exists and is not the user's own" >&2
		exit 127
	fi
fi
"#,
        );
    }
    if !task.cwd.is_empty() {
        p.extend_from_slice(b"_drover_w=");
        quote_into(&mut p, task.cwd);
        p.extend_from_slice(
            br#"
cd -- "$_drover_w" 2> /dev/null || { mkdir -p -- "$_drover_w" && cd -- "$_drover_w"; } || {
	echo "drover-error cannot enter the working directory $_drover_w" >&2
	exit 127
}
"#,
        );
    }
    if let Some((dir, files)) = task.files {
        p.extend_from_slice(b"_drover_f=");
        quote_into(&mut p, dir.as_bytes());
        p.extend_from_slice(b"\n( umask 077 && mkdir -p -- \"$_drover_f\"");
        for (name, content) in files {
            p.extend_from_slice(b" &&\n\tprintf '%s' ");
            quote_into(&mut p, content.as_bytes());
            p.extend_from_slice(b" > \"$_drover_f\"/");
            quote_into(&mut p, name.as_bytes());
        }
        p.extend_from_slice(
            br#" ) || {
	echo "drover-error cannot write the command's files into $_drover_f" >&2
	exit 127
}
"#,
        );
    }
    p.extend_from_slice(b"exec 0< /dev/null\nunset _drover_b _drover_d _drover_w _drover_f\nset --\n");
    if !task.env.is_empty() {
        p.extend_from_slice(b"set -a\n");
        for (name, value) in task.env {
            p.extend_from_slice(name.as_bytes());
            p.push(b'=');
            quote_into(&mut p, value.as_bytes());
            p.push(b'\n');
        }
        p.extend_from_slice(b"set +a\n");
    }
    match &task.run {
        Run::Program(program, args) => {
            p.extend_from_slice(b"set -- ");
            quote_into(&mut p, program);
            for arg in args {
                p.push(b' ');
                quote_into(&mut p, arg);
            }
            p.extend_from_slice(
                br#"
case $1 in
*/*) [ -f "$1" ] && [ -x "$1" ] ;;
*) command -v -- "$1" > /dev/null ;;
esac || {
	echo "drover-error cannot run $1: not found or not executable" >&2
	exit 127
}
echo drover-exec >&2
exec "$@"
"#,
            );
        }
        Run::Script(text) => {
            p.extend_from_slice(b"echo drover-exec >&2\n");
            p.extend_from_slice(text.as_bytes());
            if !text.ends_with('\n') {
                p.push(b'\n');
            }
        }
    }
    p.extend_from_slice(b"}\n");
    p
}

/// `fmt::Write` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

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

/// Removes every argument recursively.
pub(super) const REMOVE: &str = r#"rm -rf -- "$@""#;

/// Extracts a tar stream from standard input into the directory `$2`
/// (made if missing), keeping the modes recorded in the archive; files
/// belong to whoever runs it (the become user under `ssh.become`). `$1`,
/// when not empty, is the run directory `$2` is in, made first with the
/// same care as by [`task_program`].
pub(super) const UNTAR: &str = r#"umask 077
if [ -n "$1" ] && ! { [ -d "$1" ] && [ ! -h "$1" ] && [ -O "$1" ]; }; then
	mkdir -m 700 -- "$1" 2> /dev/null
	if ! { [ -d "$1" ] && [ ! -h "$1" ] && [ -O "$1" ]; }; then
		echo "the run directory $1 cannot be made, or exists and is not the user's own" >&2
		exit 1
	fi
fi
mkdir -p -- "$2" || exit 1
exec tar -x -p --no-same-owner -f - -C "$2""#;

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

/// Checks a command's environment before it is written into the task
/// program as `NAME='value'` lines (run with `set -a`, so that each is
/// exported).
///
/// Names are checked rather than quoted: a name is code to the shell that
/// reads them. Values are single-quoted and so taken literally, newlines
/// included.
pub(super) fn check_env(env: &[(String, String)]) -> Result<(), BadVariable> {
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
    }
    Ok(())
}

/// The protocol lines a task program writes at the start of standard error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Header {
    /// The program's process group and the boot it belongs to.
    Group(Group),
    /// Setup failed; the task program exits with 127.
    Error(String),
    /// The program starts now; everything after this is its output.
    Exec,
}

/// A remote process group, as reported by the command itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// The group id: the command's pid (it leads the group).
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

/// Whether a task program's `drover-error` message says the program does not
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
    fn env_names_that_are_code_are_refused() {
        assert_eq!(check_env(&[("A_1".into(), "x'y\nz".into())]), Ok(()));
        assert_eq!(
            check_env(&[("A;rm".into(), "x".into())]),
            Err(BadVariable::Name("A;rm".into()))
        );
        assert_eq!(
            check_env(&[("1A".into(), "x".into())]),
            Err(BadVariable::Name("1A".into()))
        );
        assert_eq!(check_env(&[("".into(), "x".into())]), Err(BadVariable::Name("".into())));
        assert_eq!(
            check_env(&[("A".into(), "x\0".into())]),
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
