//! A raw SQL statement that diesel prepares once per connection and then reuses.
//!
//! `diesel::sql_query` marks itself unsafe to cache, so every call would prepare the
//! statement again: one extra round trip per operation on MySQL. Each backend states its
//! SQL as a `&'static str` with `?` placeholders; this type binds the values in order and
//! lets diesel's statement cache key it by the SQL text. Batches keep a fixed text too:
//! PostgreSQL binds arrays ([`Bind::TextArray`] and friends), MySQL and SQLite one JSON
//! document ([`json_rows`]).

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
    /// PostgreSQL only: `text[]`.
    TextArray(&'a [&'a str]),
    /// PostgreSQL only: `bigint[]`.
    BigIntArray(&'a [i64]),
    /// PostgreSQL only: `float8[]`.
    DoubleArray(&'a [f64]),
}

/// Array binds: PostgreSQL has them, the other backends refuse them.
pub(crate) trait ArrayBinds: Backend {
    fn push_array<'b>(out: &mut AstPass<'_, 'b, Self>, bind: &Bind<'b>) -> QueryResult<()>;
}

#[cfg(feature = "postgres")]
impl ArrayBinds for diesel::pg::Pg {
    fn push_array<'b>(out: &mut AstPass<'_, 'b, Self>, bind: &Bind<'b>) -> QueryResult<()> {
        use diesel::sql_types::Array;
        match *bind {
            Bind::TextArray(values) => out.push_bind_param::<Array<Text>, [&str]>(values),
            Bind::BigIntArray(values) => out.push_bind_param::<Array<BigInt>, [i64]>(values),
            Bind::DoubleArray(values) => out.push_bind_param::<Array<Double>, [f64]>(values),
            _ => Err(no_arrays()),
        }
    }
}

#[cfg(feature = "mysql")]
impl ArrayBinds for diesel::mysql::Mysql {
    fn push_array<'b>(_: &mut AstPass<'_, 'b, Self>, _: &Bind<'b>) -> QueryResult<()> {
        Err(no_arrays())
    }
}

#[cfg(feature = "sqlite")]
impl ArrayBinds for diesel::sqlite::Sqlite {
    fn push_array<'b>(_: &mut AstPass<'_, 'b, Self>, _: &Bind<'b>) -> QueryResult<()> {
        Err(no_arrays())
    }
}

fn no_arrays() -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError("array binds are PostgreSQL-only".into())
}

/// Rows as one JSON document, `[[v, v, ...], ...]`, for MySQL's `JSON_TABLE` and SQLite's
/// `json_each`: one bind whatever the number of rows, so the statement text stays fixed.
// Which backends use it depends on the features.
#[allow(dead_code)]
pub(crate) fn json_rows<R, F>(rows: R, mut row: F) -> String
where
    R: IntoIterator,
    F: FnMut(R::Item, &mut JsonRow<'_>),
{
    let mut out = String::from("[");
    for (i, item) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        let mut cells = JsonRow {
            out: &mut out,
            first: true,
        };
        row(item, &mut cells);
        out.push(']');
    }
    out.push(']');
    out
}

/// The cells of one row of [`json_rows`].
#[allow(dead_code)]
pub(crate) struct JsonRow<'o> {
    out: &'o mut String,
    first: bool,
}

#[allow(dead_code)]
impl JsonRow<'_> {
    fn sep(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
    }

    pub(crate) fn int(&mut self, value: i64) -> &mut Self {
        use std::fmt::Write;
        self.sep();
        let _ = write!(self.out, "{value}");
        self
    }

    pub(crate) fn text(&mut self, value: &str) -> &mut Self {
        use std::fmt::Write;
        self.sep();
        self.out.push('"');
        for c in value.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", u32::from(c));
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
        self
    }
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
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt> + HasSqlType<Double> + ArrayBinds,
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
                Bind::TextArray(_) | Bind::BigIntArray(_) | Bind::DoubleArray(_) => {
                    DB::push_array(&mut out, bind)?
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
