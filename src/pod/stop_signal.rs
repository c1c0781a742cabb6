//! The signal StopContainer sends first: the image's `STOPSIGNAL` (as
//! containerd does), SIGTERM when the image names none.

/// Parses a signal as images spell it: `SIGUSR1`, `USR1`, `usr1`, `10`,
/// `SIGRTMIN+3`, `RTMAX-1`. `None` when it names no signal.
pub(crate) fn parse_signal(text: &str) -> Option<i32> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(n) = t.parse::<i32>() {
        return (1..=libc::SIGRTMAX()).contains(&n).then_some(n);
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt_offset(libc::SIGRTMIN(), rest, 1);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt_offset(libc::SIGRTMAX(), rest, -1);
    }
    let full = format!("SIG{name}");
    full.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// `RTMIN`, `RTMIN+n` (sign 1) or `RTMAX`, `RTMAX-n` (sign -1).
fn rt_offset(base: i32, rest: &str, sign: i32) -> Option<i32> {
    let n = if rest.is_empty() {
        0
    } else {
        let digits = match sign {
            1 => rest.strip_prefix('+')?,
            _ => rest.strip_prefix('-')?,
        };
        digits.parse::<i32>().ok()?
    };
    let sig = base.checked_add(sign * n)?;
    (libc::SIGRTMIN()..=libc::SIGRTMAX())
        .contains(&sig)
        .then_some(sig)
}

/// The stop signal of a container whose image says `image_signal`.
pub(crate) fn stop_signal(container: &str, image_signal: &str) -> i32 {
    if image_signal.is_empty() {
        return libc::SIGTERM;
    }
    match parse_signal(image_signal) {
        Some(s) => s,
        None => {
            tracing::warn!(
                container,
                signal = image_signal,
                "the image's StopSignal is no signal; sending SIGTERM"
            );
            libc::SIGTERM
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_signals() {
        for (text, want) in [
            ("SIGUSR1", Some(libc::SIGUSR1)),
            ("USR1", Some(libc::SIGUSR1)),
            ("sigint", Some(libc::SIGINT)),
            ("  SIGQUIT ", Some(libc::SIGQUIT)),
            ("9", Some(libc::SIGKILL)),
            ("SIGRTMIN", Some(libc::SIGRTMIN())),
            ("SIGRTMIN+3", Some(libc::SIGRTMIN() + 3)),
            ("RTMAX-1", Some(libc::SIGRTMAX() - 1)),
            ("SIGRTMIN+1000", None),
            ("RTMIN-1", None),
            ("0", None),
            ("999", None),
            ("SIGNOPE", None),
            ("", None),
        ] {
            assert_eq!(parse_signal(text), want, "{text:?}");
        }
    }

    #[test]
    fn default_and_fallback_are_sigterm() {
        assert_eq!(stop_signal("c", ""), libc::SIGTERM);
        assert_eq!(stop_signal("c", "SIGBOGUS"), libc::SIGTERM);
        assert_eq!(stop_signal("c", "SIGINT"), libc::SIGINT);
    }
}
