//! The container's user: `run_as_username`, `run_as_user`, `run_as_group`, or the
//! image's `USER`, resolved inside the image's /etc/passwd and /etc/group
//! contents, plus supplemental groups (containerd's `WithUser` and
//! `WithAdditionalGIDs`).

use k8s_cri::v1::{LinuxContainerSecurityContext, LinuxContainerUser, SupplementalGroupsPolicy};
use oci_spec::runtime::Spec;

use super::SpecError;

/// The resolved identity of the container's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Supplemental gids (sorted, without duplicates, including the primary gid).
    pub additional_gids: Vec<u32>,
}

/// One line of /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// Numeric uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// One line of /etc/group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Numeric gid.
    pub gid: u32,
    /// Member login names.
    pub members: Vec<String>,
}

/// Parses /etc/passwd contents. Lines that do not parse (comments, blank or
/// malformed lines, NIS `+` entries) are skipped, as libc does.
pub fn parse_passwd(contents: &str) -> Vec<PasswdEntry> {
    contents
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let uid = fields.next()?.trim().parse().ok()?;
            let gid = fields.next()?.trim().parse().ok()?;
            if name.is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .collect()
}

/// Parses /etc/group contents, skipping lines that do not parse.
pub fn parse_group(contents: &str) -> Vec<GroupEntry> {
    contents
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut fields = line.split(':');
            let name = fields.next()?;
            let _password = fields.next()?;
            let gid = fields.next()?.trim().parse().ok()?;
            let members = fields
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            if name.is_empty() {
                return None;
            }
            Some(GroupEntry {
                name: name.to_string(),
                gid,
                members,
            })
        })
        .collect()
}

/// The user spec the container runs as, before resolution: the CRI's
/// `run_as_username` or `run_as_user` (with `run_as_group`), else the image's
/// `USER`, else root. Mirrors containerd's `GenerateUserString`.
pub(crate) fn user_spec(
    sc: Option<&LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<String, SpecError> {
    let Some(sc) = sc else {
        return Ok(image_user.trim().to_string());
    };
    let mut user = String::new();
    if let Some(uid) = &sc.run_as_user {
        user = id_from_i64(uid.value, "linux.security_context.run_as_user")?.to_string();
    }
    if !sc.run_as_username.is_empty() {
        if sc.run_as_username.contains(':') {
            return Err(SpecError::field(
                "linux.security_context.run_as_username",
                format!("{:?} contains ':'", sc.run_as_username),
            ));
        }
        user = sc.run_as_username.clone();
    }
    let group = match &sc.run_as_group {
        Some(gid) => Some(id_from_i64(
            gid.value,
            "linux.security_context.run_as_group",
        )?),
        None => None,
    };
    if user.is_empty() {
        if group.is_some() {
            return Err(SpecError::field(
                "linux.security_context.run_as_group",
                "run_as_group is set without run_as_user or run_as_username",
            ));
        }
        return Ok(image_user.trim().to_string());
    }
    Ok(match group {
        Some(gid) => format!("{user}:{gid}"),
        None => user,
    })
}

fn id_from_i64(value: i64, field: &'static str) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| {
        SpecError::field(
            field,
            format!("{value} is not a valid id (0..={})", u32::MAX),
        )
    })
}

/// Resolves a user spec (`""`, `uid`, `uid:gid`, `name`, `name:group`,
/// `uid:group`, `name:gid`) against the image's passwd/group contents.
///
/// A numeric uid that is not in /etc/passwd runs with gid 0 (as containerd
/// and Docker do); a name that is not there is an error.
pub fn resolve_user_spec(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32), SpecError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok((0, 0));
    }
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let parts: Vec<&str> = spec.split(':').collect();
    let invalid = |reason: &str| SpecError::InvalidUser {
        user: spec.to_string(),
        reason: reason.to_string(),
    };
    match parts.as_slice() {
        [user] => match parse_id(user) {
            Some(uid) => {
                let gid = users.iter().find(|u| u.uid == uid).map_or(0, |u| u.gid);
                Ok((uid, gid))
            }
            None => {
                check_name(user).map_err(|r| invalid(&r))?;
                let entry = lookup_user(&users, user, passwd.is_none())?;
                Ok((entry.uid, entry.gid))
            }
        },
        [user, grp] => {
            if user.is_empty() {
                return Err(invalid("the user part is empty"));
            }
            if grp.is_empty() {
                return Err(invalid("the group part is empty"));
            }
            let uid = match parse_id(user) {
                Some(uid) => uid,
                None => {
                    check_name(user).map_err(|r| invalid(&r))?;
                    lookup_user(&users, user, passwd.is_none())?.uid
                }
            };
            let gid = match parse_id(grp) {
                Some(gid) => gid,
                None => {
                    check_name(grp).map_err(|r| invalid(&r))?;
                    let groups = group.map(parse_group).unwrap_or_default();
                    groups
                        .iter()
                        .find(|g| g.name == *grp)
                        .map(|g| g.gid)
                        .ok_or_else(|| SpecError::GroupNotFound {
                            name: grp.to_string(),
                            no_group: group.is_none(),
                        })?
                }
            };
            Ok((uid, gid))
        }
        _ => Err(invalid("expected user, user:group, uid or uid:gid")),
    }
}

fn parse_id(s: &str) -> Option<u32> {
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        s.parse().ok()
    } else {
        None
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.starts_with('-') && name[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err("negative ids are not allowed".to_string());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("names cannot hold whitespace".to_string());
    }
    Ok(())
}

fn lookup_user<'u>(
    users: &'u [PasswdEntry],
    name: &str,
    no_passwd: bool,
) -> Result<&'u PasswdEntry, SpecError> {
    users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| SpecError::UserNotFound {
            name: name.to_string(),
            no_passwd,
        })
}

/// Resolves the container's user and its supplemental groups.
pub(crate) fn resolve_user(
    sc: Option<&LinuxContainerSecurityContext>,
    image_user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, SpecError> {
    let spec = user_spec(sc, image_user)?;
    let (uid, gid) = resolve_user_spec(&spec, passwd, group)?;

    let policy = sc.map_or(0, |sc| sc.supplemental_groups_policy);
    let mut gids = vec![gid];
    match SupplementalGroupsPolicy::try_from(policy) {
        Ok(SupplementalGroupsPolicy::Merge) => {
            // The groups /etc/group lists the user in (containerd's
            // WithAdditionalGIDs); the user is named by the user part only.
            let user_part = spec.split(':').next().unwrap_or("");
            let users = passwd.map(parse_passwd).unwrap_or_default();
            let name = match parse_id(user_part) {
                Some(id) => users.iter().find(|u| u.uid == id).map(|u| u.name.clone()),
                None if user_part.is_empty() => {
                    users.iter().find(|u| u.uid == 0).map(|u| u.name.clone())
                }
                None => Some(user_part.to_string()),
            };
            if let (Some(name), Some(group)) = (name, group) {
                gids.extend(
                    parse_group(group)
                        .into_iter()
                        .filter(|g| g.name != name && g.members.contains(&name))
                        .map(|g| g.gid),
                );
            }
        }
        Ok(SupplementalGroupsPolicy::Strict) => {}
        Err(_) => {
            return Err(SpecError::field(
                "linux.security_context.supplemental_groups_policy",
                format!("unknown policy {policy} (expected Merge or Strict)"),
            ));
        }
    }
    if let Some(sc) = sc {
        for g in &sc.supplemental_groups {
            gids.push(id_from_i64(
                *g,
                "linux.security_context.supplemental_groups",
            )?);
        }
    }
    gids.sort_unstable();
    gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: gids,
    })
}

/// The identity a container's process runs with, as ContainerStatus reports
/// it (`user.linux`), read back from the container's spec.
pub fn linux_container_user(spec: &Spec) -> Option<LinuxContainerUser> {
    let user = spec.process().as_ref()?.user();
    Some(LinuxContainerUser {
        uid: i64::from(user.uid()),
        gid: i64::from(user.gid()),
        supplemental_groups: user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| i64::from(*g))
            .collect(),
    })
}
