//! Validation and code generation for `#[locked]`.
//!
//! The generated code names only `::database_locks::__private::...` and `::core::...`.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Block, Expr, FnArg, ImplItem, ImplItemFn, Item, ItemImpl, Lit, ReturnType,
    Signature, TraitItemFn, Type, UnOp,
};

use crate::attr::{Args, Setting};

/// Entry point: on any error, the item is emitted unchanged next to the error, so the rest
/// of the user's crate still type-checks and only the misuse is reported.
pub(crate) fn locked(args: TokenStream, item: TokenStream) -> TokenStream {
    match try_locked(args, item.clone()) {
        Ok(expanded) => expanded,
        Err(error) => {
            let mut out = item;
            out.extend(error.to_compile_error());
            out
        }
    }
}

fn try_locked(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args: Args = syn::parse2(args)?;
    match syn::parse2::<Item>(item.clone())? {
        Item::Fn(mut function) => {
            let name = default_name(&function.sig, Owner::Unknown);
            function.block = Box::new(locked_block(&args, &function.sig, &function.block, name)?);
            Ok(function.into_token_stream())
        }
        Item::Impl(imp) => expand_impl(args, imp),
        Item::Struct(syn::ItemStruct {
            struct_token,
            ident,
            ..
        }) => Err(syn::Error::new_spanned(
            quote!(#struct_token #ident),
            unsupported_type("a struct", &ident),
        )),
        Item::Enum(syn::ItemEnum {
            enum_token, ident, ..
        }) => Err(syn::Error::new_spanned(
            quote!(#enum_token #ident),
            unsupported_type("an enum", &ident),
        )),
        Item::Union(syn::ItemUnion {
            union_token, ident, ..
        }) => Err(syn::Error::new_spanned(
            quote!(#union_token #ident),
            unsupported_type("a union", &ident),
        )),
        Item::Trait(syn::ItemTrait {
            trait_token, ident, ..
        }) => Err(syn::Error::new_spanned(
            quote!(#trait_token #ident),
            "`#[locked]` cannot go on a trait; put it on the default methods that should run \
             under the lock",
        )),
        // A fn without a body, e.g. a method declared in a trait.
        Item::Verbatim(tokens) if syn::parse2::<TraitItemFn>(tokens.clone()).is_ok() => {
            Err(syn::Error::new_spanned(
                tokens,
                "`#[locked]` needs a fn with a body: it runs that body under the lock",
            ))
        }
        _ => Err(syn::Error::new_spanned(item, SUPPORTED)),
    }
}

const SUPPORTED: &str =
    "`#[locked]` goes on a fn, a method, `impl Command for T` (it wraps `handle`) \
     or an inherent `impl T` (it names the #[locked] fns inside after `T`)";

fn unsupported_type(what: &str, ident: &Ident) -> String {
    format!(
        "`#[locked]` cannot go on {what}; to lock a command, put it on `impl Command for {ident}` \
         (it wraps `handle`), or put it on the fns that should run under the lock"
    )
}

/// What the macro knows about the type a fn belongs to, for the default lock name.
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// On a fn by itself: a free fn, or a method whose impl the macro cannot see.
    Unknown,
    /// Inside an impl block that `#[locked]` expanded: the type's name is known.
    Type(&'a Ident),
}

/// `#[locked]` on an impl: `impl Command for T` wraps `handle`; an inherent `impl T` names
/// the `#[locked]` fns inside it after `T`, which the attribute on a fn alone cannot see for
/// an associated fn without `self`.
fn expand_impl(args: Args, mut imp: ItemImpl) -> syn::Result<TokenStream> {
    let command = match &imp.trait_ {
        None => false,
        Some((bang, path, _)) => {
            let is_command = path.segments.last().is_some_and(|s| s.ident == "Command");
            if !is_command || bang.is_some() {
                return Err(syn::Error::new_spanned(
                    quote!(#bang #path),
                    format!(
                        "`#[locked]` on an impl block supports `impl Command for T` (it wraps \
                         `handle`) and inherent impls; for a method of `{}`, put `#[locked]` on \
                         the method itself",
                        path.to_token_stream().to_string().replace(' ', ""),
                    ),
                ));
            }
            true
        }
    };
    let type_ident = type_ident(&imp.self_ty).ok_or_else(|| {
        syn::Error::new_spanned(
            &imp.self_ty,
            "`#[locked]` on an impl block needs a named type to name its locks after",
        )
    })?;
    if !command && !args.is_empty() {
        return Err(syn::Error::new(
            args.span.unwrap_or_else(Span::call_site),
            format!(
                "`#[locked]` on `impl {type_ident}` takes no arguments: it names the #[locked] fns \
                 inside after `{type_ident}`; put the arguments on those fns"
            ),
        ));
    }

    let mut errors: Option<syn::Error> = None;
    let mut wrapped = 0;
    let mut handle_found = false;
    for item in &mut imp.items {
        let ImplItem::Fn(function) = item else {
            continue;
        };
        let inner = take_locked_attr(&mut function.attrs);
        let is_handle = command && function.sig.ident == "handle";
        let result = match (is_handle, inner) {
            (true, Some(attr)) => Err(syn::Error::new_spanned(
                attr,
                "`handle` is already locked by `#[locked]` on the impl; keep the arguments there",
            )),
            (true, None) if function.sig.asyncness.is_some() => {
                handle_found = true;
                Err(syn::Error::new_spanned(
                    function.sig.asyncness,
                    "`Command::handle` is a blocking fn, so `#[locked]` on `impl Command` wraps \
                     a blocking `handle`; for async work, put `#[locked]` on an `async fn` instead",
                ))
            }
            (true, None) => {
                handle_found = true;
                let type_name = type_ident.to_string();
                let name = quote!(::core::concat!(::core::module_path!(), "::", #type_name));
                wrap_impl_fn(function, &args, Owner::Type(&type_ident), Some(name))
            }
            (false, Some(attr)) => parse_attr_args(&attr).and_then(|inner_args| {
                wrap_impl_fn(function, &inner_args, Owner::Type(&type_ident), None)
            }),
            (false, None) => continue,
        };
        match result {
            Ok(()) => wrapped += 1,
            Err(error) => push(&mut errors, error),
        }
    }
    let (impl_token, self_ty) = (&imp.impl_token, &imp.self_ty);
    if command && !handle_found && errors.is_none() {
        push(
            &mut errors,
            syn::Error::new_spanned(
                quote!(#impl_token #self_ty),
                "`#[locked]` on `impl Command` wraps `fn handle`, but this impl has none",
            ),
        );
    }
    if !command && wrapped == 0 && errors.is_none() {
        push(
            &mut errors,
            syn::Error::new_spanned(
                quote!(#impl_token #self_ty),
                format!(
                    "`#[locked]` on `impl {type_ident}` names the #[locked] fns inside it, but \
                     none has `#[locked]`; put it on the fns that should run under the lock"
                ),
            ),
        );
    }
    match errors {
        Some(errors) => Err(errors),
        None => Ok(imp.into_token_stream()),
    }
}

fn push(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(errors) => errors.combine(error),
        None => *errors = Some(error),
    }
}

/// Wraps a fn of an impl; `name` is its default lock name, else the one `owner` gives.
fn wrap_impl_fn(
    function: &mut ImplItemFn,
    args: &Args,
    owner: Owner<'_>,
    name: Option<TokenStream>,
) -> syn::Result<()> {
    let name = name.unwrap_or_else(|| default_name(&function.sig, owner));
    function.block = locked_block(args, &function.sig, &function.block, name)?;
    Ok(())
}

/// Removes and returns the first `#[locked]` (or `#[database_locks::locked]`) attribute.
fn take_locked_attr(attrs: &mut Vec<Attribute>) -> Option<Attribute> {
    let position = attrs.iter().position(|attr| {
        let segments = &attr.path().segments;
        let is = |i: usize, name: &str| segments[i].ident == name;
        match segments.len() {
            1 => is(0, "locked"),
            2 => is(0, "database_locks") && is(1, "locked"),
            _ => false,
        }
    })?;
    Some(attrs.remove(position))
}

fn parse_attr_args(attr: &Attribute) -> syn::Result<Args> {
    match &attr.meta {
        syn::Meta::Path(_) => Ok(Args::default()),
        syn::Meta::List(list) => syn::parse2(list.tokens.clone()),
        syn::Meta::NameValue(nv) => Err(syn::Error::new_spanned(
            nv,
            "expected `#[locked]` or `#[locked(...)]`",
        )),
    }
}

/// The type's own name: `Mailer` for `Mailer`, `a::Wrapper<T>` or `dyn Mailer`.
fn type_ident(ty: &Type) -> Option<Ident> {
    match ty {
        Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().map(|s| s.ident.unraw())
        }
        Type::TraitObject(object) => object.bounds.iter().find_map(|bound| match bound {
            syn::TypeParamBound::Trait(t) => t.path.segments.last().map(|s| s.ident.unraw()),
            _ => None,
        }),
        Type::Group(group) => type_ident(&group.elem),
        Type::Paren(paren) => type_ident(&paren.elem),
        _ => None,
    }
}

/// The lock name when none is given.
fn default_name(sig: &Signature, owner: Owner<'_>) -> TokenStream {
    let function = sig.ident.unraw().to_string();
    let has_self = matches!(sig.inputs.first(), Some(FnArg::Receiver(_)));
    match owner {
        Owner::Type(type_ident) => {
            let type_name = type_ident.to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #type_name, "::", #function))
        }
        // A method's type is only known at run time, from `Self`.
        Owner::Unknown if has_self => quote! {
            ::database_locks::__private::method_lock_name(
                ::core::module_path!(),
                ::core::any::type_name::<Self>(),
                #function,
            )
        },
        Owner::Unknown => quote!(::core::concat!(::core::module_path!(), "::", #function)),
    }
}

/// The user's body, unchanged, in a block of its own after the guard: `?`, `return` and
/// `self` keep their meaning, and the guard is dropped on every way out, panics included.
///
/// An `async fn` awaits the async acquire instead, and its body runs in the same place,
/// still inline: the fn's future holds the guard across the body's awaits, is `Send`
/// whenever the body's locals are (the guard and the acquire future are), and dropping it
/// (cancellation) drops the guard, which releases on a thread of the crate.
fn locked_block(
    args: &Args,
    sig: &Signature,
    block: &Block,
    default: TokenStream,
) -> syn::Result<Block> {
    check_signature(sig)?;
    let name = match &args.name {
        Some(setting) => lock_name(setting)?,
        None => default,
    };
    let settings = builder_calls(args)?;
    let guard = Ident::new("__database_locks_guard", Span::mixed_site());
    let error = Ident::new("__database_locks_error", Span::mixed_site());
    let on_error = on_error(&sig.output, &error);
    // `guard = lock`: the user's name, with the user's span, so the body can use it.
    let user_binding = args
        .guard
        .as_ref()
        .map(|setting| {
            let user = &setting.value;
            quote! { let #user: &::database_locks::__private::LockGuard = &#guard; }
        })
        .unwrap_or_default();
    let lock = quote!(::database_locks::__private::Lock::new(#name) #settings);
    let acquired = if sig.asyncness.is_some() {
        // The arguments' temporaries end with this statement, before the await: a
        // non-`Send` one (a `Ref`, an `Rc` clone) does not make the future non-`Send`.
        let acquiring = Ident::new("__database_locks_acquiring", Span::mixed_site());
        quote! {
            let #acquiring = #lock.acquire_async();
            let #guard = match #acquiring.await {
                ::core::result::Result::Ok(#guard) => #guard,
                ::core::result::Result::Err(#error) => #on_error,
            };
        }
    } else {
        quote! {
            let #guard = match #lock.acquire() {
                ::core::result::Result::Ok(#guard) => #guard,
                ::core::result::Result::Err(#error) => #on_error,
            };
        }
    };
    // The user's braces get the macro's span: as the tail of the generated block, they
    // would otherwise draw `unused_braces` on a one-line body.
    let block = Block {
        brace_token: syn::token::Brace(Span::call_site()),
        stmts: block.stmts.clone(),
    };
    let body = quote! {
        {
            #acquired
            #user_binding
            #block
        }
    };
    syn::parse2(body)
}

fn check_signature(sig: &Signature) -> syn::Result<()> {
    if let Some(token) = &sig.constness {
        return Err(syn::Error::new_spanned(
            token,
            "`#[locked]` cannot wrap a `const fn`: the lock is taken in the database at run time",
        ));
    }
    if sig.asyncness.is_none() {
        if let ReturnType::Type(_, ty) = &sig.output {
            if returns_future(ty) {
                return Err(syn::Error::new_spanned(
                    ty,
                    "`#[locked]` on a fn that returns a future would release the lock before \
                     the future runs; write it as an `async fn`, which holds the lock until \
                     its body ends (`#[async_trait]` turns an `async fn` into such a fn before \
                     `#[locked]` sees it: use a native `async fn` in the trait instead)",
                ));
            }
        }
    }
    Ok(())
}

/// `impl Future<..>` or `dyn Future<..>` anywhere in the type (`Pin<Box<dyn Future>>`).
fn returns_future(ty: &Type) -> bool {
    struct Finder(bool);
    fn is_future(
        bounds: &syn::punctuated::Punctuated<syn::TypeParamBound, syn::Token![+]>,
    ) -> bool {
        bounds.iter().any(|bound| match bound {
            syn::TypeParamBound::Trait(t) => {
                t.path.segments.last().is_some_and(|s| s.ident == "Future")
            }
            _ => false,
        })
    }
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, ty: &'ast syn::TypeImplTrait) {
            self.0 |= is_future(&ty.bounds);
            syn::visit::visit_type_impl_trait(self, ty);
        }
        fn visit_type_trait_object(&mut self, ty: &'ast syn::TypeTraitObject) {
            self.0 |= is_future(&ty.bounds);
            syn::visit::visit_type_trait_object(self, ty);
        }
    }
    let mut finder = Finder(false);
    syn::visit::Visit::visit_type(&mut finder, ty);
    finder.0
}

/// A literal name is checked here; any other expression is evaluated at each call, like
/// the other arguments, and must be a string (`&str`, `String`, ...).
fn lock_name(setting: &Setting<Expr>) -> syn::Result<TokenStream> {
    let lit = match &setting.value {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(lit), ..
        }) => lit,
        Expr::Lit(_) => {
            return Err(syn::Error::new_spanned(
                &setting.value,
                "the lock name must be a string, e.g. `#[locked(\"nightly-report\")]`; \
                 leave it out for the default name (module path and fn name)",
            ))
        }
        value => return Ok(value.to_token_stream()),
    };
    let value = lit.value();
    let chars = value.chars().count();
    let problem = if value.contains('\0') {
        "contains a NUL character".to_owned()
    } else if chars == 0 || chars > 255 {
        format!("has {chars}")
    } else {
        return Ok(lit.to_token_stream());
    };
    Err(syn::Error::new_spanned(
        lit,
        format!("a lock name must be 1 to 255 characters without NUL; this one {problem}"),
    ))
}

/// `.timeout(...)` and friends, one per argument given: unset arguments are left to the
/// runtime, which reads its defaults and config at call time.
fn builder_calls(args: &Args) -> syn::Result<TokenStream> {
    let mut calls = TokenStream::new();
    let durations = [
        (
            "timeout",
            &args.timeout,
            NoneMeans::Refused("`timeout = 0` (the default) waits for ever"),
        ),
        ("lock_ttl", &args.lock_ttl, NoneMeans::Allowed),
        ("retry", &args.retry, NoneMeans::Allowed),
        (
            "lock_ttl_renew",
            &args.lock_ttl_renew,
            NoneMeans::Refused("leave it out for the default"),
        ),
        (
            "lock_at_least_for",
            &args.lock_at_least_for,
            NoneMeans::Refused("leave it out to release at once"),
        ),
    ];
    for (key, setting, none) in durations {
        let Some(setting) = setting else { continue };
        let value = duration_value(key, setting, none)?;
        let method = Ident::new(key, setting.key);
        calls.extend(quote_spanned!(setting.value.span()=> .#method(#value)));
    }
    for (key, setting) in [
        ("locked_by", &args.locked_by),
        ("auto_renew", &args.auto_renew),
        ("lost_lock_cb", &args.lost_lock_cb),
    ] {
        let Some(setting) = setting else { continue };
        let method = Ident::new(key, setting.key);
        let value = &setting.value;
        calls.extend(quote_spanned!(value.span()=> .#method(#value)));
    }
    Ok(calls)
}

enum NoneMeans {
    Allowed,
    Refused(&'static str),
}

/// Checks what can be checked at compile time; a value computed at run time is checked by
/// the runtime and a bad one fails like the lock would.
fn duration_value(key: &str, setting: &Setting<Expr>, none: NoneMeans) -> syn::Result<TokenStream> {
    let value = &setting.value;
    if is_none(value) {
        return match none {
            NoneMeans::Allowed => Ok(quote!(
                ::core::option::Option::None::<::core::time::Duration>
            )),
            NoneMeans::Refused(hint) => Err(syn::Error::new_spanned(
                value,
                format!("`{key}` cannot be `None`; {hint}"),
            )),
        };
    }
    let literal = match value {
        Expr::Lit(lit) => Some(&lit.lit),
        Expr::Unary(unary) if matches!(unary.op, UnOp::Neg(_)) => {
            if matches!(&*unary.expr, Expr::Lit(_)) {
                return Err(syn::Error::new_spanned(
                    value,
                    format!("`{key}` cannot be negative"),
                ));
            }
            None
        }
        _ => None,
    };
    let is_zero = match literal {
        Some(Lit::Int(int)) => int.base10_parse::<u128>().is_ok_and(|n| n == 0),
        Some(Lit::Float(float)) => float.base10_parse::<f64>().is_ok_and(|f| f == 0.0),
        Some(_) => {
            return Err(syn::Error::new_spanned(
                value,
                format!(
                    "`{key}` takes seconds (an integer or a float) or a `Duration`, e.g. `{key} = 30`, \
                     `{key} = 0.5` or `{key} = Duration::from_millis(500)`"
                ),
            ))
        }
        None => false,
    };
    if is_zero && key == "lock_ttl" {
        return Err(syn::Error::new_spanned(
            value,
            "`lock_ttl` must be positive; `lock_ttl = None` means no expiry",
        ));
    }
    Ok(value.to_token_stream())
}

fn is_none(value: &Expr) -> bool {
    matches!(value, Expr::Path(path) if path.qself.is_none() && path.path.is_ident("None"))
}

/// What a failed acquire turns into, decided by the return type:
/// - a type spelled `...Result<T, E>` must carry the error (`E: From<database_locks::Error>`),
///   or the signature gets a compile error;
/// - any other nameable type gets it through `From` if it is such a `Result` (an alias),
///   and panics with the error otherwise;
/// - `()`, `!` and types with `impl Trait` panic.
fn on_error(output: &ReturnType, error: &Ident) -> TokenStream {
    let ty = match output {
        ReturnType::Default => return quote!(::database_locks::__private::lock_failed(#error)),
        ReturnType::Type(_, ty) => ty,
    };
    if matches!(**ty, Type::Never(_)) {
        return quote!(::database_locks::__private::lock_failed(#error));
    }
    let is_result = match &**ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Result"),
        _ => false,
    };
    if contains_impl_trait(ty) {
        return if is_result {
            // The type cannot be named in the body; `From` still finds the error type.
            quote_spanned! {ty.span()=>
                return ::core::result::Result::Err(::core::convert::From::from(#error))
            }
        } else {
            quote!(::database_locks::__private::lock_failed(#error))
        };
    }
    let fail = if is_result {
        Ident::new("fail_result", ty.span())
    } else {
        Ident::new("fail", ty.span())
    };
    quote_spanned! {ty.span()=>
        {
            #[allow(unused_imports)]
            use ::database_locks::__private::{PanicKind as _, ReturnErrKind as _};
            return (&::database_locks::__private::Ret::<#ty>::new()).kind().#fail(#error);
        }
    }
}

fn contains_impl_trait(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut finder = Finder(false);
    syn::visit::Visit::visit_type(&mut finder, ty);
    finder.0
}
