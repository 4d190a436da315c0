//! A raw SQL statement that diesel prepares once per connection and then reuses.
//!
//! `diesel::sql_query` marks itself unsafe to cache, so every call would prepare the
//! statement again: one extra round trip per operation on MySQL. Each backend states its
//! SQL as a `&'static str` with `?` placeholders; this type binds the values in order and
//! lets diesel's statement cache key it by the SQL text.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Double, HasSqlType, Nullable, Text, Untyped};
use diesel::{QueryResult, RunQueryDsl};

/// One bound value.
// Which variants a build uses depends on the backends it compiles.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bind<'a> {
    Text(&'a str),
    BigInt(i64),
    Double(Option<f64>),
    OptBigInt(Option<i64>),
    OptText(Option<&'a str>),
}

/// SQL with `?` placeholders, bound in order. The SQL contains no other `?`.
#[derive(Debug)]
pub(crate) struct Stmt<'a> {
    sql: &'a str,
    binds: &'a [Bind<'a>],
    cache: bool,
}

impl<'a> Stmt<'a> {
    /// A statement that is prepared once per connection.
    pub(crate) fn new(sql: &'a str, binds: &'a [Bind<'a>]) -> Self {
        debug_assert_eq!(
            sql.matches('?').count(),
            binds.len(),
            "placeholders and binds differ in {sql}"
        );
        Stmt {
            sql,
            binds,
            cache: true,
        }
    }

    /// A statement whose text varies (batches): not worth a cache slot.
    #[allow(dead_code)]
    pub(crate) fn uncached(sql: &'a str, binds: &'a [Bind<'a>]) -> Self {
        Stmt {
            cache: false,
            ..Stmt::new(sql, binds)
        }
    }
}

impl<DB> QueryFragment<DB> for Stmt<'_>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt> + HasSqlType<Double>,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    Option<f64>: ToSql<Nullable<Double>, DB>,
    Option<i64>: ToSql<Nullable<BigInt>, DB>,
    for<'x> Option<&'x str>: ToSql<Nullable<Text>, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.cache {
            out.unsafe_to_cache_prepared();
        }
        let mut pieces = self.sql.split('?');
        if let Some(first) = pieces.next() {
            out.push_sql(first);
        }
        for (piece, bind) in pieces.zip(self.binds) {
            match bind {
                Bind::Text(value) => out.push_bind_param::<Text, str>(value)?,
                Bind::BigInt(value) => out.push_bind_param::<BigInt, i64>(value)?,
                Bind::Double(value) => {
                    out.push_bind_param::<Nullable<Double>, Option<f64>>(value)?
                }
                Bind::OptBigInt(value) => {
                    out.push_bind_param::<Nullable<BigInt>, Option<i64>>(value)?
                }
                Bind::OptText(value) => {
                    out.push_bind_param::<Nullable<Text>, Option<&str>>(value)?
                }
            }
            out.push_sql(piece);
        }
        Ok(())
    }
}

impl QueryId for Stmt<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Stmt<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Stmt<'_> {}
