//! Parsing of `#[locked(...)]` arguments. Only syntax is checked here: unknown and duplicate
//! keys. What the values mean is checked in `expand.rs`.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitStr, Token};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(lock_ttl);
    syn::custom_keyword!(locked_by);
    syn::custom_keyword!(auto_renew);
    syn::custom_keyword!(retry);
    syn::custom_keyword!(lock_ttl_renew);
    syn::custom_keyword!(lost_lock_cb);
    syn::custom_keyword!(lock_at_least_for);
    syn::custom_keyword!(guard);
}

/// One `key = value` argument, with the key's span for error messages.
pub(crate) struct Setting<T> {
    pub(crate) key: Span,
    pub(crate) value: T,
}

/// The arguments of one `#[locked(...)]`, in the seed's keyword names.
#[derive(Default)]
pub(crate) struct Args {
    /// Span of the whole argument list, `None` for a bare `#[locked]`.
    pub(crate) span: Option<Span>,
    /// From the leading string literal or `name = ...`; any expression is kept so that
    /// `expand` can say why a non-string name is refused.
    pub(crate) name: Option<Setting<Expr>>,
    pub(crate) timeout: Option<Setting<Expr>>,
    pub(crate) lock_ttl: Option<Setting<Expr>>,
    pub(crate) locked_by: Option<Setting<Expr>>,
    /// A bare `auto_renew` is stored as the literal `true`.
    pub(crate) auto_renew: Option<Setting<Expr>>,
    pub(crate) retry: Option<Setting<Expr>>,
    pub(crate) lock_ttl_renew: Option<Setting<Expr>>,
    pub(crate) lost_lock_cb: Option<Setting<Expr>>,
    pub(crate) lock_at_least_for: Option<Setting<Expr>>,
    /// `guard = ident`: the body sees the held guard as `ident: &LockGuard`.
    pub(crate) guard: Option<Setting<Ident>>,
}

impl Args {
    pub(crate) fn is_empty(&self) -> bool {
        self.span.is_none()
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        if input.is_empty() {
            return Ok(args);
        }
        args.span = Some(input.span());
        let mut first = true;
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if first && lookahead.peek(LitStr) {
                let lit: LitStr = input.parse()?;
                args.name = Some(Setting {
                    key: lit.span(),
                    value: Expr::Lit(syn::ExprLit {
                        attrs: Vec::new(),
                        lit: syn::Lit::Str(lit),
                    }),
                });
            } else if lookahead.peek(kw::name) {
                assign::<kw::name>(input, &mut args.name, "name")?;
            } else if lookahead.peek(kw::timeout) {
                assign::<kw::timeout>(input, &mut args.timeout, "timeout")?;
            } else if lookahead.peek(kw::lock_ttl) {
                assign::<kw::lock_ttl>(input, &mut args.lock_ttl, "lock_ttl")?;
            } else if lookahead.peek(kw::locked_by) {
                assign::<kw::locked_by>(input, &mut args.locked_by, "locked_by")?;
            } else if lookahead.peek(kw::auto_renew) {
                if input.peek2(Token![=]) {
                    assign::<kw::auto_renew>(input, &mut args.auto_renew, "auto_renew")?;
                } else {
                    let key: kw::auto_renew = input.parse()?;
                    reject_duplicate(&args.auto_renew, key.span, "auto_renew")?;
                    args.auto_renew = Some(Setting {
                        key: key.span,
                        value: syn::parse_quote_spanned!(key.span=> true),
                    });
                }
            } else if lookahead.peek(kw::retry) {
                assign::<kw::retry>(input, &mut args.retry, "retry")?;
            } else if lookahead.peek(kw::lock_ttl_renew) {
                assign::<kw::lock_ttl_renew>(input, &mut args.lock_ttl_renew, "lock_ttl_renew")?;
            } else if lookahead.peek(kw::lost_lock_cb) {
                assign::<kw::lost_lock_cb>(input, &mut args.lost_lock_cb, "lost_lock_cb")?;
            } else if lookahead.peek(kw::lock_at_least_for) {
                assign::<kw::lock_at_least_for>(
                    input,
                    &mut args.lock_at_least_for,
                    "lock_at_least_for",
                )?;
            } else if lookahead.peek(kw::guard) {
                let key: kw::guard = input.parse()?;
                reject_duplicate(&args.guard, key.span, "guard")?;
                input.parse::<Token![=]>()?;
                let value = input.parse::<Ident>().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`guard` takes a name to bind the guard to (`guard = lock`); the body \
                         then sees it as `lock: &LockGuard`",
                    )
                })?;
                args.guard = Some(Setting {
                    key: key.span,
                    value,
                });
            } else {
                return Err(lookahead.error());
            }
            first = false;
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

/// Parses `key = expr` into `slot`, refusing a second occurrence of the key.
fn assign<K: Parse + Spanned>(
    input: ParseStream<'_>,
    slot: &mut Option<Setting<Expr>>,
    key_name: &str,
) -> syn::Result<()> {
    let key: K = input.parse()?;
    let key = key.span();
    reject_duplicate(slot, key, key_name)?;
    input.parse::<Token![=]>()?;
    let value: Expr = input.parse()?;
    *slot = Some(Setting { key, value });
    Ok(())
}

fn reject_duplicate<T>(slot: &Option<Setting<T>>, key: Span, key_name: &str) -> syn::Result<()> {
    if slot.is_some() {
        let what = if key_name == "name" {
            "the lock name is given twice (a leading string literal and `name = ...` are the \
             same argument)"
                .to_owned()
        } else {
            format!("duplicate argument `{key_name}`")
        };
        return Err(syn::Error::new(key, what));
    }
    Ok(())
}
