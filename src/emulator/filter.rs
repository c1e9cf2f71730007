//! The OData `$filter` subset Graph accepts on `/users`: a parser to an [`Expr`] tree and its
//! evaluation against a [`User`].
//!
//! Grammar: `eq`, `ne`, `in (…)` (at most 15 values), `and`, `or`, `not`, parentheses,
//! `startsWith(prop,'x')`, `endsWith(prop,'x')`, and the lambda `otherMails/any(x:x eq 'v')` /
//! `any(x:x in ('a','b'))` (also on `proxyAddresses`). Literals: single-quoted strings (`''`
//! escapes a quote), `true`, `false`, `null`. String comparison is case-insensitive, like Graph.
//!
//! As in Graph, `ne`, `not`, `endsWith` and `eq null`/`ne null` are "advanced queries": the
//! parse reports them in [`Filter::advanced`] and the caller refuses them unless the request has
//! `ConsistencyLevel: eventual` and `$count=true`. `startsWith` is a standard query in Graph and
//! needs neither.

use crate::model::User;

/// A 400 answer: Graph error code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterError {
    pub code: &'static str,
    pub message: String,
}

fn syntax(message: impl Into<String>) -> FilterError {
    FilterError {
        code: "BadRequest",
        message: format!("Invalid filter clause: {}", message.into()),
    }
}

/// Most values Graph accepts in one `in (…)`.
pub const MAX_IN_VALUES: usize = 15;

/// Longest `$filter` accepted, in characters. Graph refuses URLs much beyond a few thousand
/// characters with a 400; the emulator bounds the expression itself so that no request can make
/// it tokenize, parse or evaluate without limit.
pub const MAX_FILTER_LEN: usize = 4_096;

/// Deepest nesting of parentheses and `not` accepted. Graph's OData parser refuses deeper
/// expressions with a 400 ("The recursion limit has been exceeded"); without this bound a
/// request of 5,000 nested parentheses overflowed the emulator's stack.
pub const MAX_FILTER_DEPTH: usize = 100;

/// Most `and`/`or` operators accepted in one expression (OData's node count limit): a long flat
/// chain builds as deep a tree as nested parentheses do.
pub const MAX_FILTER_OPERATORS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
}

/// A filterable single-valued user property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prop {
    Id,
    UserType,
    AccountEnabled,
    Mail,
    OnPremisesSyncEnabled,
    UserPrincipalName,
    CreationType,
    ExternalUserState,
    DisplayName,
}

impl Prop {
    fn parse(name: &str) -> Option<Prop> {
        const ALL: [(&str, Prop); 9] = [
            ("id", Prop::Id),
            ("userType", Prop::UserType),
            ("accountEnabled", Prop::AccountEnabled),
            ("mail", Prop::Mail),
            ("onPremisesSyncEnabled", Prop::OnPremisesSyncEnabled),
            ("userPrincipalName", Prop::UserPrincipalName),
            ("creationType", Prop::CreationType),
            ("externalUserState", Prop::ExternalUserState),
            ("displayName", Prop::DisplayName),
        ];
        ALL.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }

    fn kind(self) -> Kind {
        match self {
            Prop::AccountEnabled | Prop::OnPremisesSyncEnabled => Kind::Bool,
            _ => Kind::Str,
        }
    }

    fn value(self, u: &User) -> Literal {
        let s = |v: &Option<String>| v.clone().map(Literal::Str).unwrap_or(Literal::Null);
        let b = |v: Option<bool>| v.map(Literal::Bool).unwrap_or(Literal::Null);
        match self {
            Prop::Id => Literal::Str(u.id.clone()),
            Prop::UserType => s(&u.user_type),
            Prop::AccountEnabled => b(u.account_enabled),
            Prop::Mail => s(&u.mail),
            Prop::OnPremisesSyncEnabled => b(u.on_premises_sync_enabled),
            Prop::UserPrincipalName => s(&u.user_principal_name),
            Prop::CreationType => s(&u.creation_type),
            Prop::ExternalUserState => s(&u.external_user_state),
            Prop::DisplayName => s(&u.display_name),
        }
    }
}

/// A filterable multi-valued (string collection) property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollProp {
    OtherMails,
    ProxyAddresses,
}

impl CollProp {
    fn parse(name: &str) -> Option<CollProp> {
        if name.eq_ignore_ascii_case("otherMails") {
            Some(CollProp::OtherMails)
        } else if name.eq_ignore_ascii_case("proxyAddresses") {
            Some(CollProp::ProxyAddresses)
        } else {
            None
        }
    }

    fn values(self, u: &User) -> &[String] {
        match self {
            CollProp::OtherMails => u.other_mails.as_deref().unwrap_or(&[]),
            CollProp::ProxyAddresses => u.proxy_addresses.as_deref().unwrap_or(&[]),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    StartsWith,
    EndsWith,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Eq(Prop, Literal),
    Ne(Prop, Literal),
    In(Prop, Vec<Literal>),
    Any(CollProp, Vec<String>),
    Func(Func, Prop, String),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

/// A parsed `$filter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub expr: Expr,
    /// Uses an operator Graph only accepts as an advanced query.
    pub advanced: bool,
}

fn lit_eq(a: &Literal, b: &Literal) -> bool {
    match (a, b) {
        (Literal::Str(x), Literal::Str(y)) => x.to_lowercase() == y.to_lowercase(),
        (Literal::Bool(x), Literal::Bool(y)) => x == y,
        (Literal::Null, Literal::Null) => true,
        _ => false,
    }
}

impl Expr {
    pub fn matches(&self, u: &User) -> bool {
        match self {
            Expr::Eq(p, v) => lit_eq(&p.value(u), v),
            Expr::Ne(p, v) => !lit_eq(&p.value(u), v),
            Expr::In(p, vs) => {
                let have = p.value(u);
                vs.iter().any(|v| lit_eq(&have, v))
            }
            Expr::Any(c, vs) => c.values(u).iter().any(|have| {
                let have = have.to_lowercase();
                vs.iter().any(|v| v.to_lowercase() == have)
            }),
            Expr::Func(f, p, s) => match p.value(u) {
                Literal::Str(have) => {
                    let (have, s) = (have.to_lowercase(), s.to_lowercase());
                    match f {
                        Func::StartsWith => have.starts_with(&s),
                        Func::EndsWith => have.ends_with(&s),
                    }
                }
                _ => false,
            },
            Expr::And(a, b) => a.matches(u) && b.matches(u),
            Expr::Or(a, b) => a.matches(u) || b.matches(u),
            Expr::Not(a) => !a.matches(u),
        }
    }
}

/// Positions (ascending, in tenant order) of the only users that can match `expr`, when the
/// expression pins them by `id` or `userPrincipalName`; `None` means "scan everyone".
pub fn candidates(expr: &Expr, index: &crate::emulator::tenant::Index) -> Option<Vec<usize>> {
    // `Some(hit)` for a key property (a non-string literal matches no one); `None` otherwise.
    let lookup = |p: &Prop, v: &Literal| -> Option<Option<usize>> {
        let map = match p {
            Prop::Id => &index.by_id,
            Prop::UserPrincipalName => &index.by_upn,
            _ => return None,
        };
        match v {
            Literal::Str(v) => Some(map.get(&v.to_lowercase()).copied()),
            _ => Some(None),
        }
    };
    let mut found: Vec<usize> = match expr {
        Expr::Eq(p, v) => lookup(p, v)?.into_iter().collect(),
        Expr::In(p, vs) => {
            let mut out = Vec::new();
            for v in vs {
                out.extend(lookup(p, v)?);
            }
            out
        }
        Expr::And(a, b) => return candidates(a, index).or_else(|| candidates(b, index)),
        Expr::Or(a, b) => {
            let mut out = candidates(a, index)?;
            out.extend(candidates(b, index)?);
            out
        }
        _ => return None,
    };
    found.sort_unstable();
    found.dedup();
    Some(found)
}

impl Filter {
    pub fn matches(&self, u: &User) -> bool {
        self.expr.matches(u)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Colon,
    Slash,
}

/// The token a one-character punctuation mark stands for.
fn punctuation(c: char) -> Option<Tok> {
    match c {
        '(' => Some(Tok::LParen),
        ')' => Some(Tok::RParen),
        ',' => Some(Tok::Comma),
        ':' => Some(Tok::Colon),
        '/' => Some(Tok::Slash),
        _ => None,
    }
}

fn tokenize(s: &str) -> Result<Vec<Tok>, FilterError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(tok) = punctuation(c) {
            out.push(tok);
            i += 1;
            continue;
        }
        match c {
            c if c.is_whitespace() => i += 1,
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(syntax("unterminated string literal")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '-'))
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => {
                return Err(syntax(format!(
                    "unexpected character '{other}' at position {i}"
                )))
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    advanced: bool,
    /// Current nesting of parentheses and `not`, bounded by [`MAX_FILTER_DEPTH`].
    depth: usize,
    /// `and`/`or` operators seen, bounded by [`MAX_FILTER_OPERATORS`].
    operators: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), FilterError> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(syntax(format!("expected {what}, found {}", describe(&t)))),
            None => Err(syntax(format!("expected {what}, found end of expression"))),
        }
    }

    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_FILTER_DEPTH {
            return Err(syntax(format!(
                "The recursion limit has been exceeded: more than {MAX_FILTER_DEPTH} nested parentheses or 'not'."
            )));
        }
        Ok(())
    }

    fn operator(&mut self) -> Result<(), FilterError> {
        self.pos += 1;
        self.operators += 1;
        if self.operators > MAX_FILTER_OPERATORS {
            return Err(syntax(format!(
                "The node count limit of '{MAX_FILTER_OPERATORS}' has been exceeded: too many 'and'/'or' operators."
            )));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        self.joined("or", Self::and, Expr::Or)
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        self.joined("and", Self::unary, Expr::And)
    }

    /// One or more `operand`s joined by `keyword`, grouped from the left by `join`.
    fn joined(
        &mut self,
        keyword: &str,
        operand: fn(&mut Self) -> Result<Expr, FilterError>,
        join: fn(Box<Expr>, Box<Expr>) -> Expr,
    ) -> Result<Expr, FilterError> {
        let mut left = operand(self)?;
        while self.peek_keyword(keyword) {
            self.operator()?;
            let right = operand(self)?;
            left = join(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        if self.peek_keyword("not") {
            self.pos += 1;
            self.advanced = true;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        match self.next() {
            Some(Tok::LParen) => {
                self.enter()?;
                let e = self.or()?;
                self.expect(Tok::RParen, "')'")?;
                self.depth -= 1;
                Ok(e)
            }
            Some(Tok::Ident(name)) => {
                if self.peek() == Some(&Tok::LParen) {
                    return self.function(&name);
                }
                if self.peek() == Some(&Tok::Slash) {
                    return self.lambda(&name);
                }
                self.comparison(&name)
            }
            Some(t) => Err(syntax(format!("unexpected {}", describe(&t)))),
            None => Err(syntax("unexpected end of expression")),
        }
    }

    fn property(&self, name: &str) -> Result<Prop, FilterError> {
        if let Some(p) = Prop::parse(name) {
            return Ok(p);
        }
        if CollProp::parse(name).is_some() {
            return Err(FilterError {
                code: "Request_UnsupportedQuery",
                message: format!(
                    "Unsupported or invalid query filter clause specified for property '{name}' of resource 'User'. Use a lambda such as {name}/any(x:x eq 'value')."
                ),
            });
        }
        Err(unknown_property(name))
    }

    fn function(&mut self, name: &str) -> Result<Expr, FilterError> {
        let func = if name.eq_ignore_ascii_case("startsWith") {
            Func::StartsWith
        } else if name.eq_ignore_ascii_case("endsWith") {
            self.advanced = true;
            Func::EndsWith
        } else {
            return Err(FilterError {
                code: "Request_UnsupportedQuery",
                message: format!("Unsupported function '{name}' in filter clause."),
            });
        };
        self.expect(Tok::LParen, "'('")?;
        let prop = match self.next() {
            Some(Tok::Ident(p)) => self.property(&p)?,
            _ => return Err(syntax(format!("{name} expects a property name"))),
        };
        if prop.kind() != Kind::Str {
            return Err(incompatible(name));
        }
        self.expect(Tok::Comma, "','")?;
        let value = match self.next() {
            Some(Tok::Str(s)) => s,
            _ => return Err(syntax(format!("{name} expects a string literal"))),
        };
        self.expect(Tok::RParen, "')'")?;
        Ok(Expr::Func(func, prop, value))
    }

    fn lambda(&mut self, name: &str) -> Result<Expr, FilterError> {
        let coll = CollProp::parse(name).ok_or_else(|| {
            if Prop::parse(name).is_some() {
                syntax(format!("'{name}' is not a collection"))
            } else {
                unknown_property(name)
            }
        })?;
        self.expect(Tok::Slash, "'/'")?;
        match self.next() {
            Some(Tok::Ident(a)) if a.eq_ignore_ascii_case("any") => {}
            _ => {
                return Err(FilterError {
                    code: "Request_UnsupportedQuery",
                    message: format!("Only the 'any' lambda operator is supported on '{name}'."),
                })
            }
        }
        self.expect(Tok::LParen, "'('")?;
        let var = match self.next() {
            Some(Tok::Ident(v)) => v,
            _ => return Err(syntax("expected a lambda variable")),
        };
        self.expect(Tok::Colon, "':'")?;
        match self.next() {
            Some(Tok::Ident(v)) if v == var => {}
            _ => return Err(syntax(format!("expected the lambda variable '{var}'"))),
        }
        let values = match self.next() {
            Some(Tok::Ident(op)) if op.eq_ignore_ascii_case("eq") => match self.next() {
                Some(Tok::Str(s)) => vec![s],
                _ => return Err(syntax("expected a string literal after 'eq'")),
            },
            Some(Tok::Ident(op)) if op.eq_ignore_ascii_case("in") => self
                .literal_list()?
                .into_iter()
                .map(|l| match l {
                    Literal::Str(s) => Ok(s),
                    _ => Err(incompatible(name)),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(FilterError {
                    code: "Request_UnsupportedQuery",
                    message: format!(
                        "Unsupported query: only 'eq' and 'in' are supported inside {name}/any()."
                    ),
                })
            }
        };
        self.expect(Tok::RParen, "')'")?;
        Ok(Expr::Any(coll, values))
    }

    fn literal(&mut self) -> Result<Literal, FilterError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Literal::Str(s)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("true") => Ok(Literal::Bool(true)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("false") => Ok(Literal::Bool(false)),
            Some(Tok::Ident(s)) if s.eq_ignore_ascii_case("null") => Ok(Literal::Null),
            Some(t) => Err(syntax(format!(
                "expected a literal, found {}",
                describe(&t)
            ))),
            None => Err(syntax("expected a literal, found end of expression")),
        }
    }

    fn literal_list(&mut self) -> Result<Vec<Literal>, FilterError> {
        self.expect(Tok::LParen, "'(' after 'in'")?;
        let mut out = vec![self.literal()?];
        loop {
            match self.next() {
                Some(Tok::Comma) => out.push(self.literal()?),
                Some(Tok::RParen) => break,
                Some(t) => {
                    return Err(syntax(format!(
                        "expected ',' or ')', found {}",
                        describe(&t)
                    )))
                }
                None => return Err(syntax("unterminated 'in' list")),
            }
        }
        if out.len() > MAX_IN_VALUES {
            return Err(FilterError {
                code: "Request_UnsupportedQuery",
                message: format!(
                    "Too many child clauses specified in search filter expression containing 'OR' operators: {}. Max allowed: {MAX_IN_VALUES}.",
                    out.len()
                ),
            });
        }
        Ok(out)
    }

    fn check_kind(&self, prop: Prop, name: &str, lit: &Literal) -> Result<(), FilterError> {
        match (prop.kind(), lit) {
            (_, Literal::Null) | (Kind::Str, Literal::Str(_)) | (Kind::Bool, Literal::Bool(_)) => {
                Ok(())
            }
            _ => Err(incompatible(name)),
        }
    }

    fn comparison(&mut self, name: &str) -> Result<Expr, FilterError> {
        let prop = self.property(name)?;
        let op = match self.next() {
            Some(Tok::Ident(op)) => op.to_ascii_lowercase(),
            Some(t) => {
                return Err(syntax(format!(
                    "expected an operator after '{name}', found {}",
                    describe(&t)
                )))
            }
            None => return Err(syntax(format!("expected an operator after '{name}'"))),
        };
        match op.as_str() {
            "eq" | "ne" => {
                let lit = self.literal()?;
                self.check_kind(prop, name, &lit)?;
                if op == "ne" || lit == Literal::Null {
                    self.advanced = true;
                }
                Ok(if op == "eq" {
                    Expr::Eq(prop, lit)
                } else {
                    Expr::Ne(prop, lit)
                })
            }
            "in" => {
                let list = self.literal_list()?;
                for l in &list {
                    self.check_kind(prop, name, l)?;
                }
                Ok(Expr::In(prop, list))
            }
            "gt" | "ge" | "lt" | "le" | "has" => Err(FilterError {
                code: "Request_UnsupportedQuery",
                message: format!("Unsupported or invalid query filter clause specified for property '{name}' of resource 'User'."),
            }),
            other => Err(syntax(format!("unknown operator '{other}'"))),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("'{s}'"),
        Tok::Str(s) => format!("string '{s}'"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::Comma => "','".into(),
        Tok::Colon => "':'".into(),
        Tok::Slash => "'/'".into(),
    }
}

fn unknown_property(name: &str) -> FilterError {
    FilterError {
        code: "BadRequest",
        message: format!(
            "Could not find a property named '{name}' on type 'microsoft.graph.user'."
        ),
    }
}

fn incompatible(name: &str) -> FilterError {
    FilterError {
        code: "BadRequest",
        message: format!(
            "Invalid filter clause: a binary operator with incompatible types was detected for property '{name}'."
        ),
    }
}

/// Parse a `$filter` value.
pub fn parse(s: &str) -> Result<Filter, FilterError> {
    let len = s.chars().count();
    if len > MAX_FILTER_LEN {
        return Err(syntax(format!(
            "the expression is {len} characters long; at most {MAX_FILTER_LEN} are accepted."
        )));
    }
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err(syntax("empty expression"));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        advanced: false,
        depth: 0,
        operators: 0,
    };
    let expr = p.or()?;
    if let Some(t) = p.peek() {
        return Err(syntax(format!(
            "unexpected {} after the end of the expression",
            describe(t)
        )));
    }
    Ok(Filter {
        expr,
        advanced: p.advanced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_and_upn_lookups_narrow_the_scan_and_nothing_else_does() {
        let mut index = crate::emulator::tenant::Index::default();
        for (pos, id) in ["a", "b", "c"].iter().enumerate() {
            index.add_user(
                pos,
                &User {
                    id: id.to_string(),
                    user_principal_name: Some(format!("{id}@contoso.com")),
                    ..Default::default()
                },
            );
        }
        let cands = |f: &str| candidates(&parse(f).unwrap().expr, &index);
        assert_eq!(
            cands("id in ('c','A','zz') and userType eq 'Guest'"),
            Some(vec![0, 2])
        );
        assert_eq!(cands("userPrincipalName eq 'B@contoso.com'"), Some(vec![1]));
        assert_eq!(
            cands("id eq 'a' or userPrincipalName eq 'c@contoso.com'"),
            Some(vec![0, 2])
        );
        assert_eq!(cands("id eq 'a' or mail eq 'x@y.com'"), None);
        assert_eq!(cands("userType eq 'Guest'"), None);
        assert_eq!(cands("accountEnabled eq false"), None);
    }

    fn user() -> User {
        User {
            id: "u1".into(),
            user_type: Some("Guest".into()),
            account_enabled: Some(true),
            mail: Some("Ann.Lee@Fabrikam.com".into()),
            other_mails: Some(vec!["ann@northwind.example".into()]),
            proxy_addresses: Some(vec!["SMTP:ann@contoso.com".into()]),
            user_principal_name: Some("ann.lee@contoso.com".into()),
            ..Default::default()
        }
    }

    fn m(s: &str) -> bool {
        parse(s).unwrap().matches(&user())
    }

    #[test]
    fn standard_operators() {
        assert!(m("userType eq 'guest'"));
        assert!(!m("userType eq 'Member'"));
        assert!(m(
            "accountEnabled eq true and userType in ('Member','Guest')"
        ));
        assert!(m("mail eq 'x@y.com' or id eq 'u1'"));
        assert!(m(
            "(mail eq 'x@y.com' or id eq 'U1') and accountEnabled eq true"
        ));
        assert!(m("otherMails/any(x:x eq 'ANN@northwind.example')"));
        assert!(m("proxyAddresses/any(p:p in ('a','smtp:ann@contoso.com'))"));
        assert!(m("startsWith(userPrincipalName,'ann')"));
        assert!(!parse("userType eq 'Guest'").unwrap().advanced);
        assert!(!parse("startsWith(mail,'a')").unwrap().advanced);
    }

    #[test]
    fn advanced_operators_are_flagged() {
        for f in [
            "userType ne 'Member'",
            "not (userType eq 'Member')",
            "endsWith(mail,'@fabrikam.com')",
            "onPremisesUserPrincipalName eq null",
            "externalUserState eq null",
            "mail ne null",
        ] {
            match parse(f) {
                Ok(p) => assert!(p.advanced, "{f}"),
                Err(e) => assert!(f.contains("onPremisesUserPrincipalName"), "{f}: {e:?}"),
            }
        }
        assert!(m("externalUserState eq null"));
        assert!(m("endsWith(mail,'@FABRIKAM.com')"));
        assert!(!m("not (userType eq 'Guest')"));
    }

    #[test]
    fn quotes_escape_and_precedence() {
        let f = parse("displayName eq 'O''Brien'").unwrap();
        assert_eq!(
            f.expr,
            Expr::Eq(Prop::DisplayName, Literal::Str("O'Brien".into()))
        );
        // and binds tighter than or
        let f = parse("id eq 'a' or id eq 'b' and id eq 'c'").unwrap();
        assert!(matches!(f.expr, Expr::Or(_, _)));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = parse("favouriteColour eq 'blue'").unwrap_err();
        assert!(e.message.contains("favouriteColour"));
        let e = parse("userType eq").unwrap_err();
        assert_eq!(e.code, "BadRequest");
        let e = parse("userType eq 'Guest' and").unwrap_err();
        assert_eq!(e.code, "BadRequest");
        let e = parse("accountEnabled eq 'yes'").unwrap_err();
        assert!(e.message.contains("incompatible"));
        let e = parse("mail eq 'unterminated").unwrap_err();
        assert!(e.message.contains("unterminated"));
        let many: Vec<String> = (0..16).map(|i| format!("'{i}'")).collect();
        let e = parse(&format!("id in ({})", many.join(","))).unwrap_err();
        assert_eq!(e.code, "Request_UnsupportedQuery");
        let ok: Vec<String> = (0..15).map(|i| format!("'{i}'")).collect();
        assert!(parse(&format!("id in ({})", ok.join(","))).is_ok());
        assert!(parse("otherMails eq 'a'").is_err());
        assert!(parse("userType gt 'a'").is_err());
    }

    #[test]
    fn depth_length_and_operator_count_are_bounded_with_a_400() {
        let deep = format!("{}id eq 'a'{}", "(".repeat(5_000), ")".repeat(5_000));
        let e = parse(&deep).unwrap_err();
        assert_eq!(e.code, "BadRequest");
        assert!(e.message.contains("characters"), "{}", e.message);
        let nested = |n: usize| format!("{}id eq 'a'{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_FILTER_DEPTH)).is_ok());
        let e = parse(&nested(MAX_FILTER_DEPTH + 1)).unwrap_err();
        assert!(e.message.contains("recursion limit"), "{}", e.message);
        let nots = format!("{}id eq 'a'", "not ".repeat(MAX_FILTER_DEPTH + 1));
        assert!(parse(&nots)
            .unwrap_err()
            .message
            .contains("recursion limit"));
        let chain = |n: usize| vec!["id eq 'a'"; n + 1].join(" or ");
        assert!(parse(&chain(MAX_FILTER_OPERATORS)).is_ok());
        let e = parse(&chain(MAX_FILTER_OPERATORS + 1)).unwrap_err();
        assert!(e.message.contains("node count"), "{}", e.message);
        let long = format!("mail eq '{}'", "x".repeat(MAX_FILTER_LEN));
        assert!(parse(&long).unwrap_err().message.contains("characters"));
    }

    /// Generated inputs, bounded in count: every one is parsed or refused, never a panic.
    #[test]
    fn generated_filters_never_panic() {
        const PIECES: [&str; 24] = [
            "(",
            ")",
            "id",
            "eq",
            "ne",
            "in",
            "and",
            "or",
            "not",
            "'a'",
            "''",
            "'",
            ",",
            ":",
            "/",
            "any",
            "x",
            "otherMails",
            "startsWith",
            "true",
            "null",
            "\u{0}",
            "é",
            " ",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let user = User::default();
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let text: String = (0..len)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ");
            if let Ok(f) = parse(&text) {
                let _ = f.matches(&user);
            }
        }
    }
}
