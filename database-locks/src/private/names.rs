//! Default lock names that only the run time knows.

/// `<module>::<Type>::<method>` for a method, with `Type` taken from `type_name::<Self>()`:
/// its last path segment without generic arguments, so that `Wrapper<u8>` and
/// `Wrapper<u16>` share a lock and the name does not depend on the crate path of `Self`.
/// A type that is not a path (a tuple, an array) keeps its whole type name.
pub fn method_lock_name(module: &str, type_name: &str, method: &str) -> String {
    format!("{module}::{}::{method}", type_ident(type_name))
}

fn type_ident(type_name: &str) -> &str {
    let path = type_name.split('<').next().unwrap_or(type_name);
    let last = path.rsplit("::").next().unwrap_or(path);
    let last = last
        .trim_start_matches(['&', '*'])
        .trim_start_matches("mut ")
        .trim_start_matches("const ");
    let last = last.strip_prefix("dyn ").unwrap_or(last);
    if !last.is_empty() && last.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        last
    } else {
        type_name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_use_the_types_own_name() {
        let name = |type_name| method_lock_name("app::jobs", type_name, "flush");
        assert_eq!(name("app::mail::Mailer"), "app::jobs::Mailer::flush");
        assert_eq!(name("app::W<alloc::vec::Vec<u8>>"), "app::jobs::W::flush");
        assert_eq!(name("app::m::P<'_>"), "app::jobs::P::flush");
        assert_eq!(name("&app::Mailer"), "app::jobs::Mailer::flush");
        assert_eq!(name("dyn app::Job"), "app::jobs::Job::flush");
        assert_eq!(name("(u8, u16)"), "app::jobs::(u8, u16)::flush");
    }
}
